//go:build tools

// Package tools pins the JobSet controller that scripts/build-control-plane.sh builds.
package tools

import _ "sigs.k8s.io/jobset"
