// Package version holds the build's version, stamped at link time by the Makefile.
package version

import "runtime/debug"

// Version is set with -ldflags "-X github.com/isthmus-mesh/isthmus/internal/version.Version=...".
var Version = ""

// String returns the stamped version, else the VCS revision Go recorded, else "dev".
func String() string {
	if Version != "" {
		return Version
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				return "dev-" + s.Value[:12]
			}
		}
	}
	return "dev"
}
