package check

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// ExitUnhealthy is `isthmus check`'s exit code when an error was found.
const ExitUnhealthy = 2

// ExitCode is 0 for a healthy mesh (warnings alone included), else
// ExitUnhealthy.
func (r *Report) ExitCode() int {
	if r.Healthy {
		return 0
	}
	return ExitUnhealthy
}

// Counts are the report's errors and warnings.
func (r *Report) Counts() (errors, warnings int) {
	for _, f := range r.Findings {
		if f.Severity == SeverityError {
			errors++
		} else {
			warnings++
		}
	}
	return errors, warnings
}

func plural(n int, word string) string {
	if n == 1 {
		return fmt.Sprintf("1 %s", word)
	}
	return fmt.Sprintf("%d %ss", n, word)
}

// Verdict is the last line: "mesh healthy: 2 clusters on 2 networks, 9
// proxies synced" (and the warnings, if any), or "mesh unhealthy: 2
// errors, 1 warning".
func (r *Report) Verdict() string {
	errs, warns := r.Counts()
	if !r.Healthy {
		return fmt.Sprintf("mesh unhealthy: %s, %s", plural(errs, "error"), plural(warns, "warning"))
	}
	s := fmt.Sprintf("mesh healthy: %s on %s, %s synced", plural(r.Summary.Clusters, "cluster"), plural(r.Summary.Networks, "network"), plural(r.Summary.ProxiesSynced, "proxy"))
	s = strings.Replace(s, "proxys", "proxies", 1)
	if warns > 0 {
		s += "; " + plural(warns, "warning")
	}
	return s
}

// WriteTable prints the rows (CHECK CLUSTER STATUS DETAIL), then each
// finding with its fix, then the verdict.
func (r *Report) WriteTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "CHECK\tCLUSTER\tSTATUS\tDETAIL")
	for _, row := range r.Checks {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", row.Check, orDash(row.Cluster), row.Status, row.Detail)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(r.Findings) > 0 {
		fmt.Fprintln(w)
		for _, f := range r.Findings {
			fmt.Fprintf(w, "%s %s [cluster %s, %s]\n  %s\n  fix: %s\n", strings.ToUpper(string(f.Severity)), f.Code, orDash(f.Cluster), f.Subject, f.Message, f.Fix)
		}
	}
	fmt.Fprintln(w)
	_, err := fmt.Fprintln(w, r.Verdict())
	return err
}

// WriteJSON prints {"healthy","checks","findings"}.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}
