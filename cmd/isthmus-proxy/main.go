//go:build linux

// Command isthmus-proxy is the isthmus data plane alone (sidecar, gateway,
// proxy init), the binary the image's injected containers run: without the
// control plane and Kubernetes' client packages of isthmus, a sidecar's
// memory holds only the proxy's code. It takes the command lines of
// `isthmus proxy ...` after the binary's name; the proxy runs on Linux only.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/isthmus-mesh/isthmus/internal/proxycli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := proxycli.Execute(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
