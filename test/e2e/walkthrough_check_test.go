package e2e

import (
	"encoding/json"
	"errors"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"
)

// checkReport is `isthmus check -o json`.
type checkReport struct {
	Healthy bool `json:"healthy"`
	Checks  []struct {
		Check, Cluster, Status, Detail string
	} `json:"checks"`
	Findings []struct {
		Code, Severity, Cluster, Subject, Message, Fix string
	} `json:"findings"`
}

// codes are the report's finding codes with their clusters (CODE@CLUSTER).
func (r checkReport) codes() []string {
	var out []string
	for _, f := range r.Findings {
		out = append(out, f.Code+"@"+f.Cluster)
	}
	return out
}

// check runs isthmus check on the mesh (args: more flags) and returns its
// report and exit code.
func (w *walkthrough) check(t *testing.T, args ...string) (checkReport, int) {
	t.Helper()
	r := isthmus(t, 5*time.Minute, append(append([]string{"check", "--context", "cluster-eks", "-o", "json", "--timeout", "4m"}, args...), w.kc...)...)
	code := 0
	var exit *exec.ExitError
	if errors.As(r.err, &exit) {
		code = exit.ExitCode()
	} else if r.err != nil {
		t.Fatalf("isthmus check: %v", r.err)
	}
	var rep checkReport
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatalf("isthmus check -o json printed no report (%v):\n%s\n%s", err, r.stdout, r.stderr)
	}
	return rep, code
}

// healthy asserts a green check: exit 0, no error, every check ok (or
// skipped/warning), clusters as wanted.
func (w *walkthrough) healthy(t *testing.T, clusters ...string) {
	t.Helper()
	rep, code := w.check(t)
	if code != 0 || !rep.Healthy {
		t.Errorf("isthmus check on a healthy mesh: exit %d, findings %v", code, rep.Findings)
	}
	for _, c := range clusters {
		found := false
		for _, row := range rep.Checks {
			found = found || row.Cluster == c && row.Check == "cross-network" && row.Status == "ok"
		}
		if !found {
			t.Errorf("isthmus check has no ok cross-network probe row for %s: %+v", c, rep.Checks)
		}
	}
}

// unhealthy asserts a red check naming each of want (CODE@CLUSTER).
func (w *walkthrough) unhealthy(t *testing.T, want []string, args ...string) {
	t.Helper()
	rep, code := w.check(t, args...)
	if code != 2 || rep.Healthy {
		t.Errorf("isthmus check: exit %d, healthy %v, want 2 and unhealthy", code, rep.Healthy)
	}
	got := rep.codes()
	for _, c := range want {
		if !slices.Contains(got, c) {
			t.Errorf("isthmus check names %v, want %s among them", got, c)
		}
	}
	for _, f := range rep.Findings {
		if f.Message == "" || f.Fix == "" {
			t.Errorf("finding %s without a message or fix: %+v", f.Code, f)
		}
	}
}

// checkArea: isthmus check is green on the walkthrough's mesh (its probe
// crosses both networks), names the east-west gateway and the
// unreachable network when cluster-aks's gateway has no pod, and is green
// again once it is back.
func checkArea(t *testing.T, w *walkthrough) {
	e := w.e
	t.Run("check: green on the walkthrough's mesh, a probe from each cluster answered by both", func(t *testing.T) {
		w.healthy(t, "cluster-eks", "cluster-aks")
		table := isthmus(t, 5*time.Minute, append([]string{"check", "--context", "cluster-eks", "--probe=false"}, w.kc...)...)
		if table.err != nil || !strings.Contains(table.stdout, "mesh healthy: 2 clusters on 2 networks") {
			t.Errorf("isthmus check's table: %v\n%s", table.err, table.stdout)
		}
	})
	t.Run("check: cluster-aks's east-west gateway without a pod is named, and so is the network it cuts off", func(t *testing.T) {
		scale := func(n string) {
			t.Helper()
			if out, err := e.kubectl("cluster-aks", "", "-n", "istio-system", "scale", "deploy/istio-eastwestgateway", "--replicas="+n); err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
		}
		scale("0")
		restored := false
		defer func() {
			if !restored {
				scale("1")
			}
		}()
		eventually(t, "cluster-aks's east-west gateway gone", func() bool {
			return len(e.readyPods("cluster-aks", "istio-system", "app=istio-eastwestgateway")) == 0
		})
		// The probe's calls to cluster-aks go on until the check's time is
		// nearly out: a shorter one.
		w.unhealthy(t, []string{"EastWestGatewayNotReady@cluster-aks", "CrossNetworkUnreachable@cluster-eks"}, "--timeout", "2m")
		scale("1")
		restored = true
		e.waitReady("cluster-aks", "istio-system", "app=istio-eastwestgateway", 1)
		w.healthy(t, "cluster-eks", "cluster-aks")
	})
}
