// Package check says whether a multicluster mesh is healthy, across every
// cluster: the control plane and its leader, the proxies' sync state, the
// remote clusters the control plane watches, the east-west gateways of
// every network, the root of trust in every namespace, workload
// certificates, the injection webhook as each API server reaches it, and a
// cross-network probe (a demo app in every cluster called from every
// cluster). Each failure is a Finding with a stable code, what is wrong
// and what to do; `isthmus check` prints them.
//
// The checks read clusters through kubernetes.Interface and pods through
// PodHTTP (a port-forward in the CLI), so they run against client-go's
// fake clientset and canned answers in tests.
package check

import (
	"context"
	"fmt"
	"io"
	"sort"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"
)

// Finding codes: stable, one per failure mode.
const (
	CodeControlPlaneUnavailable = "ControlPlaneUnavailable"
	CodeControlPlaneDegraded    = "ControlPlaneDegraded"
	CodeNoLeader                = "NoLeader"
	CodeProxyConfigRejected     = "ProxyConfigRejected"
	CodeProxyNotSynced          = "ProxyNotSynced"
	CodeRemoteClusterStale      = "RemoteClusterStale"
	CodeRemoteClusterRefused    = "RemoteClusterRefused"
	CodeRemoteClusterNotSynced  = "RemoteClusterNotSynced"
	CodeRemoteSecretMissing     = "RemoteSecretMissing"
	CodeRemoteContextUnknown    = "RemoteContextUnknown"
	CodeEastWestGatewayMissing  = "EastWestGatewayMissing"
	CodeEastWestGatewayNoAddr   = "EastWestGatewayNoAddress"
	CodeEastWestGatewayNotReady = "EastWestGatewayNotReady"
	CodeRootCertMissing         = "RootCertMissing"
	CodeRootCertMismatch        = "RootCertMismatch"
	CodeRootCertExpiring        = "RootCertExpiring"
	CodeWorkloadCertExpiring    = "WorkloadCertExpiring"
	CodeInjectionUnavailable    = "InjectionUnavailable"
	CodeInjectionNotApplied     = "InjectionNotApplied"
	CodeCrossNetworkUnreachable = "CrossNetworkUnreachable"
	// CodeProbeFailed: the cross-network probe could not run in a cluster
	// (its pods did not start or finish), so it says nothing of the paths.
	CodeProbeFailed = "ProbeFailed"
	// CodeClusterUnreachable: the cluster's API server does not answer the
	// check (with the kubeconfig context's credentials); its checks skip it.
	CodeClusterUnreachable = "ClusterUnreachable"
	// CodeCheckFailed: a check could not read what it needs. A warning when
	// the credentials lack a permission (RBAC: it names it) or when the
	// injection check's dry-run pod was refused for a reason other than
	// the injection webhook; an error for any other API error.
	CodeCheckFailed = "CheckFailed"
)

// Check names, the table's CHECK column, in the order printed.
const (
	CheckControlPlane  = "control-plane"
	CheckProxies       = "proxies"
	CheckRemoteCluster = "remote-cluster"
	CheckGateway       = "east-west-gateway"
	CheckRootCert      = "root-cert"
	CheckWorkloadCert  = "workload-cert"
	CheckInjection     = "injection"
	CheckCrossNetwork  = "cross-network"
)

var checkOrder = []string{CheckControlPlane, CheckProxies, CheckRemoteCluster, CheckGateway, CheckRootCert, CheckWorkloadCert, CheckInjection, CheckCrossNetwork}

// Severity of a finding.
type Severity string

// Severities: errors make the mesh unhealthy, warnings do not.
const (
	SeverityError   Severity = "error"
	SeverityWarning Severity = "warning"
)

// Status of a row.
type Status string

// Row statuses. Unknown: the check depends on the control plane, which
// does not answer.
const (
	StatusOK      Status = "ok"
	StatusWarning Status = "warning"
	StatusError   Status = "error"
	StatusSkipped Status = "skipped"
	StatusUnknown Status = "unknown"
)

// Row is one check in one cluster.
type Row struct {
	Check   string `json:"check"`
	Cluster string `json:"cluster"`
	Status  Status `json:"status"`
	Detail  string `json:"detail"`
}

// Finding is one thing wrong, with what to do.
type Finding struct {
	Code     string   `json:"code"`
	Severity Severity `json:"severity"`
	Cluster  string   `json:"cluster"`
	Subject  string   `json:"subject"`
	Message  string   `json:"message"`
	Fix      string   `json:"fix"`
}

// Report is the outcome of Run.
type Report struct {
	Healthy  bool      `json:"healthy"`
	Checks   []Row     `json:"checks"`
	Findings []Finding `json:"findings"`
	// Summary is for the verdict line.
	Summary Summary `json:"-"`
}

// Summary counts what a healthy verdict names.
type Summary struct {
	Clusters, Networks, ProxiesSynced int
}

// PodHTTP asks a pod's port over HTTP (inspect.Cluster's port-forward).
type PodHTTP interface {
	Get(ctx context.Context, pod *corev1.Pod, port int, path string) ([]byte, error)
}

// Cluster is one cluster of the mesh.
type Cluster struct {
	// ID is the mesh's cluster ID: the primary's CLUSTER_ID (filled in by
	// Run from the istiod Deployment when empty), a remote's remote-secret
	// key. Empty for a --remote-contexts cluster without a secret.
	ID string
	// Context is the kubeconfig context reaching it ("": none matched).
	Context string
	// Server is the API server URL (the remote secret's, else the context's).
	Server string
	// Secret is the remote secret naming it (namespace/name); "" for the
	// primary and for a cluster no secret names.
	Secret string
	// Matched says how the context was found ("server", "name",
	// "--remote-contexts"), for the table.
	Matched string
	// Client reads the cluster; nil: no context, per-cluster checks skip it.
	Client kubernetes.Interface
	// Pods reaches pods' ports (control plane monitoring, proxies' admin).
	Pods PodHTTP
}

// Name is what rows and findings call the cluster: its ID, else its context.
func (c *Cluster) Name() string {
	if c.ID != "" {
		return c.ID
	}
	return c.Context
}

// Mesh is what Run checks.
type Mesh struct {
	// Namespace is the control plane's (istio-system).
	Namespace string
	Primary   *Cluster
	// Remotes: one per remote secret (Client nil when no context matched
	// it) and one per --remote-contexts context no secret names.
	Remotes []*Cluster
	// ExplicitContexts: the remotes' contexts came from --remote-contexts.
	ExplicitContexts bool
}

func (m *Mesh) clusters() []*Cluster {
	return append([]*Cluster{m.Primary}, m.Remotes...)
}

// Options tune Run; zero values are the defaults.
type Options struct {
	// Probe runs the cross-network probe.
	Probe bool
	// ProbeTimeout caps how long each probe client calls. 0: what the
	// context's deadline leaves, less the time to start the client's pod
	// and read its log (without a deadline, 2m).
	ProbeTimeout time.Duration
	// StaleAfter is how long a proxy may stay STALE (30s).
	StaleAfter time.Duration
	// CertCap is how many proxies per cluster have their workload
	// certificate read (20).
	CertCap int
	// Poll is the pause between looks while waiting (1s).
	Poll time.Duration
	// Now is the clock (time.Now).
	Now func() time.Time
	// Progress gets a line per slow step (nil: none).
	Progress io.Writer
}

func (o *Options) defaults() {
	if o.StaleAfter == 0 {
		o.StaleAfter = 30 * time.Second
	}
	if o.CertCap == 0 {
		o.CertCap = 20
	}
	if o.Poll == 0 {
		o.Poll = time.Second
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
}

// run is one Run's state.
type run struct {
	mesh *Mesh
	opts Options

	mu       sync.Mutex
	rows     []Row
	findings []Finding
	progress sync.Mutex
	// reachable are the clusters whose API server answered.
	reachable map[*Cluster]bool
}

func (r *run) row(check string, c *Cluster, st Status, format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.rows = append(r.rows, Row{Check: check, Cluster: c.Name(), Status: st, Detail: fmt.Sprintf(format, args...)})
}

func (r *run) find(f Finding) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.findings = append(r.findings, f)
}

func (r *run) say(format string, args ...any) {
	r.progress.Lock()
	defer r.progress.Unlock()
	fmt.Fprintf(r.opts.Progress, "check: "+format+"\n", args...)
}

// checked are the clusters the per-cluster checks read: with a client and
// an API server that answers.
func (r *run) checked() []*Cluster {
	var out []*Cluster
	for _, c := range r.mesh.clusters() {
		if c.Client != nil && r.reachable[c] {
			out = append(out, c)
		}
	}
	return out
}

// Run checks the mesh. It fails only when the primary's API server cannot
// be read at all; everything else is a finding.
func Run(ctx context.Context, mesh *Mesh, opts Options) (*Report, error) {
	opts.defaults()
	if mesh.Namespace == "" {
		mesh.Namespace = "istio-system"
	}
	r := &run{mesh: mesh, opts: opts, reachable: map[*Cluster]bool{}}
	if err := answers(ctx, mesh.Primary.Client); err != nil {
		return nil, fmt.Errorf("the primary cluster's API server (context %q) does not answer: %w", mesh.Primary.Context, err)
	}
	r.reachable[mesh.Primary] = true
	r.reachability(ctx)

	cp, err := r.controlPlane(ctx)
	if err != nil {
		return nil, err
	}
	var probe *probeRun
	var probeDone chan struct{}
	switch {
	case !opts.Probe:
	case !cp.up():
	default:
		probe = &probeRun{r: r, image: cp.image}
		probeDone = make(chan struct{})
		go func() {
			defer close(probeDone)
			probe.run(ctx)
		}()
	}
	r.remoteClusters(cp)
	networks := r.networks(ctx, cp)
	r.gateways(ctx, networks)
	r.rootCerts(ctx)
	r.workloadCerts(ctx)
	r.injection(ctx, cp.image)
	synced := r.proxies(ctx, cp)
	switch {
	case !opts.Probe:
		for _, c := range mesh.clusters() {
			r.row(CheckCrossNetwork, c, StatusSkipped, "--probe=false")
		}
	case probe == nil:
		for _, c := range mesh.clusters() {
			r.row(CheckCrossNetwork, c, StatusUnknown, "control plane not answering")
		}
	default:
		<-probeDone
		probe.report(networks)
	}
	return r.report(networks, synced), nil
}

// reachability asks every remote's API server for its version: one that
// does not answer is a finding, and the per-cluster checks skip it.
func (r *run) reachability(ctx context.Context) {
	var wg sync.WaitGroup
	var mu sync.Mutex
	for _, c := range r.mesh.Remotes {
		if c.Client == nil {
			continue
		}
		wg.Go(func() {
			err := answers(ctx, c.Client)
			if err == nil {
				mu.Lock()
				r.reachable[c] = true
				mu.Unlock()
				return
			}
			r.find(Finding{Code: CodeClusterUnreachable, Severity: SeverityError, Cluster: c.Name(), Subject: "context " + c.Context,
				Message: fmt.Sprintf("the API server of cluster %s (context %s, %s) does not answer this check: %v; its gateways, root certificates, injection and probe are not checked", c.Name(), c.Context, c.Server, err),
				Fix:     fmt.Sprintf("check the context's credentials and the network path to the API server: kubectl --context %s get --raw /readyz", c.Context)})
		})
	}
	wg.Wait()
}

// answers asks an API server for its version, for at most 15 s.
func answers(ctx context.Context, client kubernetes.Interface) error {
	done := make(chan error, 1)
	go func() {
		_, err := client.Discovery().ServerVersion()
		done <- err
	}()
	select {
	case err := <-done:
		return err
	case <-time.After(15 * time.Second):
		return fmt.Errorf("no answer in 15s")
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (r *run) report(networks map[*Cluster]string, synced int) *Report {
	rep := &Report{Healthy: true, Checks: r.rows, Findings: r.findings}
	order := map[string]int{}
	for i, c := range checkOrder {
		order[c] = i
	}
	clusterOrder := map[string]int{}
	for i, c := range r.mesh.clusters() {
		if _, ok := clusterOrder[c.Name()]; !ok {
			clusterOrder[c.Name()] = i
		}
	}
	rank := func(name string) int {
		if i, ok := clusterOrder[name]; ok {
			return i
		}
		return len(clusterOrder)
	}
	sort.SliceStable(rep.Checks, func(i, j int) bool {
		a, b := rep.Checks[i], rep.Checks[j]
		if order[a.Check] != order[b.Check] {
			return order[a.Check] < order[b.Check]
		}
		if rank(a.Cluster) != rank(b.Cluster) {
			return rank(a.Cluster) < rank(b.Cluster)
		}
		return a.Cluster < b.Cluster
	})
	sort.SliceStable(rep.Findings, func(i, j int) bool {
		a, b := rep.Findings[i], rep.Findings[j]
		if a.Severity != b.Severity {
			return a.Severity == SeverityError
		}
		if a.Code != b.Code {
			return a.Code < b.Code
		}
		if rank(a.Cluster) != rank(b.Cluster) {
			return rank(a.Cluster) < rank(b.Cluster)
		}
		return a.Subject < b.Subject
	})
	for _, f := range rep.Findings {
		if f.Severity == SeverityError {
			rep.Healthy = false
		}
	}
	if rep.Checks == nil {
		rep.Checks = []Row{}
	}
	if rep.Findings == nil {
		rep.Findings = []Finding{}
	}
	nets := map[string]bool{}
	for _, n := range networks {
		if n != "" {
			nets[n] = true
		}
	}
	// Clusters that name no network are on one network together.
	rep.Summary = Summary{Clusters: len(r.mesh.clusters()), Networks: max(len(nets), 1), ProxiesSynced: synced}
	return rep
}
