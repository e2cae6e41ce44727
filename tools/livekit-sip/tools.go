//go:build tools

// Package tools pins the SIP bridge command so `go build` can build it from this module.
package tools

import _ "github.com/livekit/sip/cmd/livekit-sip"
