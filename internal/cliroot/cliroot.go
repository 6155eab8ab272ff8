// Package cliroot is what the roots of isthmus's two binaries share, so that
// `isthmus proxy sidecar` and `isthmus-proxy proxy sidecar` behave alike:
// the -v flag and the process's log handler, whose level a proxy's admin
// port changes (/logging), and command groups that refuse words they do not
// know. It imports nothing of the mesh, so the lean proxy binary can use it.
package cliroot

import (
	"fmt"
	"io"
	"log/slog"

	"github.com/spf13/cobra"
)

// New returns a root command named use that leaves printing errors to its
// caller. Before any command runs, level is set (debug with -v, else info)
// and slog's default handler writes text to stderr at level, so that
// whoever holds level (a proxy's admin port) changes what is logged.
func New(use, short, long string, level *slog.LevelVar, stdout, stderr io.Writer) *cobra.Command {
	var verbose bool
	root := &cobra.Command{
		Use:           use,
		Short:         short,
		Long:          long,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRun: func(*cobra.Command, []string) {
			level.Set(slog.LevelInfo)
			if verbose {
				level.Set(slog.LevelDebug)
			}
			slog.SetDefault(slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level})))
		},
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.PersistentFlags().BoolVarP(&verbose, "verbose", "v", false, "log debug detail")
	return root
}

// RefuseUnknown makes every command under cmd that only groups others fail
// on a word it does not know, as istioctl does: cobra would print the
// group's help and exit 0, so a script's typo (or istioctl's spelling of a
// command isthmus lacks) passed for success.
func RefuseUnknown(cmd *cobra.Command) {
	for _, c := range cmd.Commands() {
		RefuseUnknown(c)
	}
	if !cmd.HasSubCommands() || cmd.Runnable() {
		return
	}
	cmd.Args = cobra.ArbitraryArgs
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if len(args) == 0 {
			return cmd.Help()
		}
		msg := fmt.Sprintf("unknown command %q for %q", args[0], cmd.CommandPath())
		if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
			msg += fmt.Sprintf("; did you mean %q?", s[0])
		}
		return fmt.Errorf("%s (run '%s --help' for its commands)", msg, cmd.CommandPath())
	}
}
