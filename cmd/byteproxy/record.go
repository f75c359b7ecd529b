//go:build byteproxy_record

package main

// The integration tests' build (internal/testutil) records every answer
// the gateway makes, to check it against the OpenAPI document.
import _ "github.com/byteproxy/byteproxy/internal/testutil/record"
