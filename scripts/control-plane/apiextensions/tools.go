//go:build tools

// Package tools pins the standalone apiextensions-apiserver that scripts/build-control-plane.sh builds.
package tools

import _ "k8s.io/apiextensions-apiserver"
