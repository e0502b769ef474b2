//go:build tools

// Package tools pins the kwok controller (simulated nodes and pod lifecycles) that
// scripts/build-control-plane.sh builds.
package tools

import _ "sigs.k8s.io/kwok/cmd/kwok"
