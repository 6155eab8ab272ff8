//go:build !linux

package cli

import (
	"fmt"
	"runtime"

	"github.com/spf13/cobra"
)

// linuxCommands, away from Linux, are hidden stand-ins that say where the
// real ones run (see commands_linux.go).
func linuxCommands() []*cobra.Command {
	return []*cobra.Command{linuxOnly("proxy"), linuxOnly("sandbox")}
}

func linuxOnly(name string) *cobra.Command {
	return &cobra.Command{
		Use:                name,
		Short:              "Runs only on Linux",
		Hidden:             true,
		DisableFlagParsing: true,
		RunE: func(*cobra.Command, []string) error {
			return fmt.Errorf("isthmus %s runs only on Linux; this binary is for %s/%s", name, runtime.GOOS, runtime.GOARCH)
		},
	}
}
