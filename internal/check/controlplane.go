package check

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/isthmus-mesh/isthmus/internal/discovery/leader"
	"github.com/isthmus-mesh/isthmus/internal/discovery/remotesecret"
	"github.com/isthmus-mesh/isthmus/internal/inspect"
)

// IstiodName is the control plane's Deployment (and Service), Istio's name.
const IstiodName = "istiod"

// controlPlane is what the primary's control plane said.
type controlPlane struct {
	desired, ready int32
	running        []corev1.Pod
	// answering are the pods whose /ready answered ok, by name.
	answering map[string]*corev1.Pod
	clusterID string
	image     string
	network   string
	// syncz is the first reading of every answering pod's proxies, at syncAt.
	syncz  []inspect.ProxyStatus
	syncAt time.Time
	// clusterz is each answering pod's /debug/clusterz.
	clusterz map[string][]remotesecret.Status
}

func (cp *controlPlane) up() bool { return len(cp.answering) > 0 }

func (cp *controlPlane) answeringNames() []string {
	var out []string
	for n := range cp.answering {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

func envOf(c corev1.Container, name string) string {
	for _, e := range c.Env {
		if e.Name == name {
			return e.Value
		}
	}
	return ""
}

// controlPlane checks istiod's replicas, each pod's /ready and the
// leader Lease, and reads each answering pod's syncz and clusterz.
func (r *run) controlPlane(ctx context.Context) (*controlPlane, error) {
	p, ns := r.mesh.Primary, r.mesh.Namespace
	cp := &controlPlane{answering: map[string]*corev1.Pod{}, clusterz: map[string][]remotesecret.Status{}}
	fixLogs := fmt.Sprintf("kubectl --context %s -n %s describe pods -l app=istiod; kubectl --context %s -n %s logs -l app=istiod", ctxName(p), ns, ctxName(p), ns)
	dep, err := p.Client.AppsV1().Deployments(ns).Get(ctx, IstiodName, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		r.unavailable(cp, fmt.Sprintf("no Deployment %s/%s", ns, IstiodName), fmt.Sprintf("no Deployment %s/%s in the primary cluster: the control plane is not installed there", ns, IstiodName),
			fmt.Sprintf("install it: isthmus install -f PRIMARY-ISTIOOPERATOR.yaml --context %s (or pass the right --context / -i)", ctxName(p)))
		return cp, nil
	case err != nil:
		return nil, fmt.Errorf("read Deployment %s/%s in the primary: %w", ns, IstiodName, err)
	}
	cp.desired = 1
	if dep.Spec.Replicas != nil {
		cp.desired = *dep.Spec.Replicas
	}
	cp.ready = dep.Status.ReadyReplicas
	for _, c := range dep.Spec.Template.Spec.Containers {
		if id := envOf(c, "CLUSTER_ID"); id != "" || c.Name == "discovery" {
			if cp.image == "" || c.Name == "discovery" {
				cp.image, cp.clusterID, cp.network = c.Image, id, envOf(c, "NETWORK")
			}
		}
	}
	if cp.image == "" && len(dep.Spec.Template.Spec.Containers) > 0 {
		cp.image = dep.Spec.Template.Spec.Containers[0].Image
	}
	if cp.clusterID == "" {
		cp.clusterID = "Kubernetes" // the installer's default, as Istio's
	}
	if p.ID == "" {
		p.ID = cp.clusterID
	}
	pods, err := p.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=istiod"})
	if err != nil {
		return nil, fmt.Errorf("list control plane pods in %s of the primary: %w", ns, err)
	}
	for _, pod := range pods.Items {
		if pod.Status.Phase == corev1.PodRunning && pod.DeletionTimestamp == nil {
			cp.running = append(cp.running, pod)
		}
	}
	sort.Slice(cp.running, func(i, j int) bool { return cp.running[i].Name < cp.running[j].Name })
	var notReady []string
	for i := range cp.running {
		pod := &cp.running[i]
		r.say("asking control plane pod %s/%s (port-forward to %d)", ns, pod.Name, inspect.MonitoringPort)
		if _, err := p.Pods.Get(ctx, pod, inspect.MonitoringPort, "/ready"); err != nil {
			notReady = append(notReady, fmt.Sprintf("%s: %v", pod.Name, oneLine(err)))
			continue
		}
		cp.answering[pod.Name] = pod
	}
	if !cp.up() {
		short := fmt.Sprintf("%d/%d replicas ready, no pod answers /ready", cp.ready, cp.desired)
		why := fmt.Sprintf("%d of %d replicas of %s/%s are ready and no control plane pod answers /ready", cp.ready, cp.desired, ns, IstiodName)
		if len(cp.running) == 0 {
			short = fmt.Sprintf("%d/%d replicas ready, no running pod", cp.ready, cp.desired)
			why = fmt.Sprintf("%d of %d replicas of %s/%s are ready and no pod labelled app=istiod is running", cp.ready, cp.desired, ns, IstiodName)
		}
		if len(notReady) > 0 {
			why += " (" + strings.Join(notReady, "; ") + ")"
		}
		r.unavailable(cp, short, why+": proxies get no configuration or certificates, and pods of namespaces labelled for injection are refused", "look at why: "+fixLogs)
		return cp, nil
	}
	detail := fmt.Sprintf("%d/%d replicas ready", len(cp.answering), cp.desired)
	status := StatusOK
	if cp.ready < cp.desired || int32(len(cp.answering)) < cp.desired {
		status = StatusWarning
		msg := fmt.Sprintf("%d of %d replicas of %s/%s are ready", min(cp.ready, int32(len(cp.answering))), cp.desired, ns, IstiodName)
		if len(notReady) > 0 {
			msg += "; not answering /ready: " + strings.Join(notReady, "; ")
		}
		r.find(Finding{Code: CodeControlPlaneDegraded, Severity: SeverityWarning, Cluster: p.Name(), Subject: ns + "/" + IstiodName,
			Message: msg + ": the mesh is served, with less room for a replica's failure", Fix: fixLogs})
	}
	if holder, problem := r.leader(ctx, cp); problem != "" {
		status = StatusWarning
		detail += ", no leader"
		r.find(Finding{Code: CodeNoLeader, Severity: SeverityWarning, Cluster: p.Name(), Subject: ns + "/" + leader.LeaseName,
			Message: problem + ": nothing writes to the clusters meanwhile (istio-ca-root-cert of new namespaces, the webhooks' caBundle, a remote's istiod endpoints)",
			Fix:     fmt.Sprintf("a running replica takes the Lease within %s; if none does, see its log: kubectl --context %s -n %s logs -l app=istiod | grep -i lead", leader.LeaseDuration+leader.RetryPeriod, ctxName(p), ns)})
	} else {
		detail += ", leader " + holder
	}
	r.row(CheckControlPlane, p, status, "%s (image %s)", detail, cp.image)
	for _, name := range cp.answeringNames() {
		pod := cp.answering[name]
		if b, err := p.Pods.Get(ctx, pod, inspect.MonitoringPort, "/debug/clusterz"); err == nil {
			var list []remotesecret.Status
			if json.Unmarshal(b, &list) == nil {
				cp.clusterz[name] = list
			}
		}
	}
	cp.syncz, cp.syncAt = r.syncz(ctx, cp), r.opts.Now()
	return cp, nil
}

// unavailable is the finding and rows of a control plane that does not
// answer: the checks that ask it are unknown.
func (r *run) unavailable(cp *controlPlane, short, why, fix string) {
	p, ns := r.mesh.Primary, r.mesh.Namespace
	if p.ID == "" && cp.clusterID != "" {
		p.ID = cp.clusterID
	}
	r.find(Finding{Code: CodeControlPlaneUnavailable, Severity: SeverityError, Cluster: p.Name(), Subject: ns + "/" + IstiodName, Message: why, Fix: fix})
	r.row(CheckControlPlane, p, StatusError, "%s", short)
	for _, c := range r.mesh.clusters() {
		r.row(CheckProxies, c, StatusUnknown, "control plane not answering")
	}
	for _, c := range r.mesh.Remotes {
		if c.Secret != "" {
			r.row(CheckRemoteCluster, c, StatusUnknown, "control plane not answering")
		}
	}
}

// leader reads the Lease: its holder must be a running control plane pod
// that renewed it within the lease duration.
func (r *run) leader(ctx context.Context, cp *controlPlane) (holder, problem string) {
	p, ns := r.mesh.Primary, r.mesh.Namespace
	lease, err := p.Client.CoordinationV1().Leases(ns).Get(ctx, leader.LeaseName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return "", fmt.Sprintf("no Lease %s/%s: no replica has led", ns, leader.LeaseName)
	}
	if err != nil {
		return "", fmt.Sprintf("the Lease %s/%s cannot be read (%v)", ns, leader.LeaseName, oneLine(err))
	}
	id := ""
	if lease.Spec.HolderIdentity != nil {
		id = *lease.Spec.HolderIdentity
	}
	if id == "" {
		return "", fmt.Sprintf("the Lease %s/%s has no holder", ns, leader.LeaseName)
	}
	// The identity is POD_UUID (package leader).
	pod := id
	if i := strings.LastIndex(id, "_"); i > 0 {
		pod = id[:i]
	}
	running := false
	for _, rp := range cp.running {
		running = running || rp.Name == pod
	}
	if !running {
		return "", fmt.Sprintf("the Lease %s/%s is held by %s, which is not a running control plane pod", ns, leader.LeaseName, pod)
	}
	dur := leader.LeaseDuration
	if lease.Spec.LeaseDurationSeconds != nil {
		dur = time.Duration(*lease.Spec.LeaseDurationSeconds) * time.Second
	}
	if lease.Spec.RenewTime == nil {
		return "", fmt.Sprintf("the Lease %s/%s held by %s was never renewed", ns, leader.LeaseName, pod)
	}
	if age := r.opts.Now().Sub(lease.Spec.RenewTime.Time); age > dur {
		return "", fmt.Sprintf("the Lease %s/%s held by %s was last renewed %s ago (lease duration %s): the leader stopped renewing it", ns, leader.LeaseName, pod, age.Round(time.Second), dur)
	}
	return pod, ""
}

// syncz reads every answering pod's proxies (a proxy is connected to one
// replica; the same ID twice keeps the first).
func (r *run) syncz(ctx context.Context, cp *controlPlane) []inspect.ProxyStatus {
	p := r.mesh.Primary
	var out []inspect.ProxyStatus
	seen := map[string]bool{}
	for _, name := range cp.answeringNames() {
		b, err := p.Pods.Get(ctx, cp.answering[name], inspect.MonitoringPort, "/debug/syncz")
		if err != nil {
			continue
		}
		var list []inspect.ProxyStatus
		if json.Unmarshal(b, &list) != nil {
			continue
		}
		for _, ps := range list {
			if strings.HasSuffix(ps.ProxyID, "."+ProbeNamespace) {
				continue // the probe's own pods, starting meanwhile
			}
			key := ps.ClusterID + "/" + ps.ProxyID
			if seen[key] {
				continue
			}
			seen[key] = true
			ps.Istiod = name
			out = append(out, ps)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].ClusterID != out[j].ClusterID {
			return out[i].ClusterID < out[j].ClusterID
		}
		return out[i].ProxyID < out[j].ProxyID
	})
	return out
}

// proxyLogs is the kubectl command that shows a proxy's log (its ID is
// POD.NAMESPACE).
func (r *run) proxyLogs(ps inspect.ProxyStatus) string {
	pod, ns := ps.ProxyID, "NAMESPACE"
	if i := strings.LastIndex(pod, "."); i > 0 {
		pod, ns = pod[:i], pod[i+1:]
	}
	ctx := "CONTEXT"
	for _, c := range r.mesh.clusters() {
		if c.ID == ps.ClusterID && c.Context != "" {
			ctx = c.Context
		}
	}
	return fmt.Sprintf("kubectl --context %s -n %s logs %s -c istio-proxy", ctx, ns, pod)
}

var xdsTypes = []string{"cds", "lds", "eds", "rds"}

// staleTypes are the types a proxy has not acknowledged.
func staleTypes(p inspect.ProxyStatus) []string {
	var out []string
	for _, t := range xdsTypes {
		if strings.HasPrefix(p.Sync(t), "STALE") {
			out = append(out, t)
		}
	}
	return out
}

// proxies checks every proxy's sync state: a NACK is an error; a proxy
// STALE at the first reading and still, on the same push, StaleAfter
// later is a warning. It returns how many proxies are synced.
func (r *run) proxies(ctx context.Context, cp *controlPlane) int {
	if !cp.up() {
		return 0
	}
	first := cp.syncz
	latest := first
	var stuck map[string][]string // proxy ID -> types stale at both readings
	var staleFirst int
	for _, ps := range first {
		if len(staleTypes(ps)) > 0 {
			staleFirst++
		}
	}
	if staleFirst > 0 {
		wait := r.opts.StaleAfter - r.opts.Now().Sub(cp.syncAt)
		if wait > 0 {
			r.say("%d proxies have not acknowledged their configuration; looking again in %s", staleFirst, wait.Round(time.Second))
			select {
			case <-time.After(wait):
			case <-ctx.Done():
			}
		}
		if ctx.Err() == nil {
			latest = r.syncz(ctx, cp)
			stuck = map[string][]string{}
			before := map[string]inspect.ProxyStatus{}
			for _, ps := range first {
				before[ps.ClusterID+"/"+ps.ProxyID] = ps
			}
			for _, ps := range latest {
				b, ok := before[ps.ClusterID+"/"+ps.ProxyID]
				if !ok {
					continue
				}
				for _, t := range staleTypes(b) {
					s0, _ := b.Versions(t)
					_, a1 := ps.Versions(t)
					if strings.HasPrefix(ps.Sync(t), "STALE") && a1 != s0 {
						stuck[ps.ClusterID+"/"+ps.ProxyID] = append(stuck[ps.ClusterID+"/"+ps.ProxyID], t)
					}
				}
			}
		}
	}
	type counts struct{ total, synced, nacked, stuck int }
	per := map[string]*counts{}
	for _, c := range r.mesh.clusters() {
		per[c.Name()] = &counts{}
	}
	syncedAll := 0
	for _, ps := range latest {
		k := per[ps.ClusterID]
		if k == nil {
			k = &counts{}
			per[ps.ClusterID] = k
		}
		k.total++
		if ps.Synced() {
			k.synced++
			syncedAll++
		}
		var nacks []string
		for _, t := range xdsTypes {
			if msg := ps.Nacked[t]; msg != "" {
				nacks = append(nacks, fmt.Sprintf("%s: %s", strings.ToUpper(t), msg))
			}
		}
		if len(nacks) > 0 {
			k.nacked++
			r.find(Finding{Code: CodeProxyConfigRejected, Severity: SeverityError, Cluster: ps.ClusterID, Subject: ps.ProxyID,
				Message: fmt.Sprintf("proxy %s rejected (NACKED) the configuration %s sent it: %s; it keeps running its previous configuration", ps.ProxyID, ps.Istiod, strings.Join(nacks, "; ")),
				Fix:     fmt.Sprintf("find the Istio object the message names (isthmus analyze; isthmus proxy-config; the proxy's log: %s) and fix or remove it", r.proxyLogs(ps))})
		}
		if types := stuck[ps.ClusterID+"/"+ps.ProxyID]; len(types) > 0 {
			k.stuck++
			r.find(Finding{Code: CodeProxyNotSynced, Severity: SeverityWarning, Cluster: ps.ClusterID, Subject: ps.ProxyID,
				Message: fmt.Sprintf("proxy %s has not acknowledged its %s from %s for more than %s", ps.ProxyID, strings.ToUpper(strings.Join(types, ", ")), ps.Istiod, r.opts.StaleAfter),
				Fix:     fmt.Sprintf("isthmus proxy-status; the proxy's log (%s) and its connection to the control plane", r.proxyLogs(ps))})
		}
	}
	names := make([]string, 0, len(per))
	for n := range per {
		names = append(names, n)
	}
	sort.Strings(names)
	byName := map[string]*Cluster{}
	for _, c := range r.mesh.clusters() {
		byName[c.Name()] = c
	}
	for _, n := range names {
		k := per[n]
		c := byName[n]
		if c == nil {
			c = &Cluster{ID: n}
		}
		total := strings.Replace(plural(k.total, "proxy"), "proxys", "proxies", 1)
		switch {
		case k.total == 0:
			r.row(CheckProxies, c, StatusOK, "no proxies connected")
		case k.nacked > 0:
			r.row(CheckProxies, c, StatusError, "%s: %d synced, %d rejected their configuration", total, k.synced, k.nacked)
		case k.stuck > 0:
			r.row(CheckProxies, c, StatusWarning, "%s: %d synced, %d not acknowledging for over %s", total, k.synced, k.stuck, r.opts.StaleAfter)
		default:
			r.row(CheckProxies, c, StatusOK, "%s: %d synced", total, k.synced)
		}
	}
	return syncedAll
}

// remoteClusters checks each remote as every answering replica's
// clusterz says, and the remotes' secrets and contexts.
func (r *run) remoteClusters(cp *controlPlane) {
	p := r.mesh.Primary
	if len(r.mesh.Remotes) == 0 {
		r.row(CheckRemoteCluster, p, StatusOK, "no remote secrets: a single-cluster mesh")
	}
	for _, c := range r.mesh.Remotes {
		if c.Secret == "" {
			r.find(Finding{Code: CodeRemoteSecretMissing, Severity: SeverityError, Cluster: c.Name(), Subject: "context " + c.Context,
				Message: fmt.Sprintf("no remote secret in %s of the primary names cluster %s (context %s, server %s): the control plane does not watch it, so its services are reached from nowhere else and its pods get no configuration",
					r.mesh.Namespace, c.Name(), c.Context, c.Server),
				Fix: fmt.Sprintf("isthmus create-remote-secret --context %s --name CLUSTER_ID | kubectl apply --context %s -f - (CLUSTER_ID: the remote's values.global.multiCluster.clusterName)", c.Context, ctxName(p))})
			r.row(CheckRemoteCluster, c, StatusError, "no remote secret (context %s)", c.Context)
			continue
		}
		where := "no kubeconfig context"
		if c.Client != nil {
			where = fmt.Sprintf("context %s, matched by %s", c.Context, c.Matched)
		} else {
			which := "no kubeconfig context"
			if r.mesh.ExplicitContexts {
				which = "none of --remote-contexts"
			}
			r.find(Finding{Code: CodeRemoteContextUnknown, Severity: SeverityWarning, Cluster: c.Name(), Subject: c.Secret,
				Message: fmt.Sprintf("the remote secret %s names cluster %s at %s, which %s reaches: its gateways, root certificates, injection and probe are not checked", c.Secret, c.Name(), orUnknown(c.Server), which),
				Fix:     fmt.Sprintf("add a context for %s to the kubeconfig, or name the cluster's context with --remote-contexts", orUnknown(c.Server))})
		}
		if !cp.up() {
			continue // unavailable() wrote the row
		}
		r.remoteCluster(cp, c, where)
	}
}

// stateRank orders clusterz states from best to worst.
var stateRank = map[string]int{"synced": 0, "syncing": 1, "timeout": 2, "stale": 3, "error": 4}

func (r *run) remoteCluster(cp *controlPlane, c *Cluster, where string) {
	p := r.mesh.Primary
	var worst *remotesecret.Status
	var worstPod string
	var missing []string
	for _, pod := range cp.answeringNames() {
		list, ok := cp.clusterz[pod]
		if !ok {
			continue // this pod's clusterz could not be read
		}
		var st *remotesecret.Status
		for i := range list {
			if list[i].ID == c.ID {
				st = &list[i]
			}
		}
		if st == nil {
			missing = append(missing, pod)
			continue
		}
		if worst == nil || stateRank[st.State] > stateRank[worst.State] {
			worst, worstPod = st, pod
		}
	}
	fixRemote := fmt.Sprintf("isthmus remote-clusters --context %s; the control plane's log: kubectl --context %s -n %s logs -l app=istiod", ctxName(p), ctxName(p), r.mesh.Namespace)
	switch {
	case worst == nil && len(missing) == 0:
		r.row(CheckRemoteCluster, c, StatusUnknown, "the control plane's /debug/clusterz could not be read (%s)", where)
		return
	case len(missing) > 0 && (worst == nil || worst.State == "synced"):
		r.find(Finding{Code: CodeRemoteClusterNotSynced, Severity: SeverityError, Cluster: c.Name(), Subject: c.Secret,
			Message: fmt.Sprintf("control plane pod(s) %s do not watch cluster %s although the remote secret %s names it", strings.Join(missing, ", "), c.Name(), c.Secret),
			Fix:     "the secret must be labelled " + remotesecret.LabelMultiCluster + "=true and its data key be the cluster ID; " + fixRemote})
		r.row(CheckRemoteCluster, c, StatusError, "not watched by %s (%s)", strings.Join(missing, ", "), where)
		return
	}
	switch worst.State {
	case "synced":
		r.row(CheckRemoteCluster, c, StatusOK, "synced (%s)", where)
	case "stale":
		since := "an unknown time"
		if worst.StaleSince != nil {
			since = fmt.Sprintf("%s (%s ago)", worst.StaleSince.UTC().Format(time.RFC3339), r.opts.Now().Sub(*worst.StaleSince).Round(time.Second))
		}
		r.find(Finding{Code: CodeRemoteClusterStale, Severity: SeverityError, Cluster: c.Name(), Subject: c.Secret,
			Message: fmt.Sprintf("the API server of cluster %s has not answered the control plane (%s) since %s: its last-known endpoints are served, and changes in the cluster are not seen", c.Name(), worstPod, since),
			Fix:     fmt.Sprintf("check the API server %s and the network path to it from the primary's control plane pods; kubectl --context %s get --raw /readyz", orUnknown(c.Server), ctxName(c))})
		r.row(CheckRemoteCluster, c, StatusError, "stale since %s (%s)", since, where)
	case "error":
		if refused(worst.Error) {
			r.find(Finding{Code: CodeRemoteClusterRefused, Severity: SeverityError, Cluster: c.Name(), Subject: c.Secret,
				Message: fmt.Sprintf("the API server of cluster %s refuses the credentials of the remote secret %s (%s): %s", c.Name(), c.Secret, worstPod, worst.Error),
				Fix:     fmt.Sprintf("isthmus create-remote-secret --context %s --name %s | kubectl apply --context %s -f -", ctxName(c), c.ID, ctxName(p))})
			r.row(CheckRemoteCluster, c, StatusError, "credentials refused (%s)", where)
			return
		}
		r.find(Finding{Code: CodeRemoteClusterNotSynced, Severity: SeverityError, Cluster: c.Name(), Subject: c.Secret,
			Message: fmt.Sprintf("the control plane (%s) cannot watch cluster %s: %s", worstPod, c.Name(), orUnknown(worst.Error)),
			Fix:     "fix the remote secret " + c.Secret + " as the error says (isthmus create-remote-secret writes a good one); " + fixRemote})
		r.row(CheckRemoteCluster, c, StatusError, "error (%s)", where)
	default: // syncing, timeout
		r.find(Finding{Code: CodeRemoteClusterNotSynced, Severity: SeverityError, Cluster: c.Name(), Subject: c.Secret,
			Message: fmt.Sprintf("the control plane (%s) has not synced cluster %s: state %s%s", worstPod, c.Name(), worst.State, prefixed(": ", worst.Error)),
			Fix:     "a cluster syncs in seconds; one that does not is unreachable or too slow from the primary's control plane pods: " + fixRemote})
		r.row(CheckRemoteCluster, c, StatusError, "%s (%s)", worst.State, where)
	}
}

// refused says whether a clusterz error is the API server refusing the
// secret's credentials (401/403).
func refused(msg string) bool {
	m := strings.ToLower(msg)
	for _, s := range []string{"refuses the secret's credentials", "unauthorized", "forbidden", "401", "403"} {
		if strings.Contains(m, s) {
			return true
		}
	}
	return false
}

func ctxName(c *Cluster) string {
	if c == nil || c.Context == "" {
		return "CONTEXT"
	}
	return c.Context
}

func orUnknown(s string) string {
	if s == "" {
		return "an unknown server"
	}
	return s
}

func prefixed(p, s string) string {
	if s == "" {
		return ""
	}
	return p + s
}

func oneLine(err error) string {
	return strings.Join(strings.Fields(err.Error()), " ")
}
