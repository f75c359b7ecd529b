//go:build !linux

package main

import "os/exec"

// setDeathSignal is a no-op off Linux; children are still killed on a
// normal exit and on Ctrl-C, and the upstream exits when its stdin closes.
func setDeathSignal(*exec.Cmd) {}
