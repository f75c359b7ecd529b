package services

const simGitHubToken = "ghp_sim_token_0123456789"
