package check

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/utils/ptr"

	"github.com/isthmus-mesh/isthmus/internal/demoapp"
)

// The probe's objects, in every cluster.
const (
	ProbeNamespace = "isthmus-check"
	// ProbeServer is the Deployment answering /profile (the demo app).
	ProbeServer = "probe"
	// ProbeClient is the Pod that calls the servers, and its container is
	// ProbeContainer.
	ProbeClient    = "probe-client"
	ProbeContainer = "probe"
	ProbePort      = 8080
	// ProbeClusterLabel is on a probe server's pods: its cluster's
	// ProbeKey. Each cluster's Service ProbeService(ID) selects on it, in
	// every cluster, so its only endpoints are that cluster's probe pods.
	ProbeClusterLabel = "isthmus.io/check-cluster"
	// ProbeClusterPlaceholder is what ProbeURLTemplate's clusters go in
	// as their ProbeKey.
	ProbeClusterPlaceholder = "{cluster}"
	// ProbeURLTemplate is what every client calls once per wanted
	// cluster: that cluster's own Service, whose endpoints are all in it,
	// so a call from another cluster must cross the network (locality
	// load balancing cannot keep it at home).
	ProbeURLTemplate = "http://probe-" + ProbeClusterPlaceholder + "." + ProbeNamespace + ":8080/profile?id=1"
	// ManagedByLabel is on the namespace the check creates, with value
	// ManagedBy: the check deletes no namespace without it.
	ManagedByLabel = "app.kubernetes.io/managed-by"
	ManagedBy      = "isthmus-check"
	// probeUID runs the probe's containers: not the proxy's 1337, whose
	// traffic the sidecar does not capture (the demo-app image's user).
	probeUID = 65532
)

// The probe's share of the check's budget (the context's deadline).
const (
	// probeLogRead is kept for reading a probe client's log.
	probeLogRead = 10 * time.Second
	// probeMargin is what a probe client's calls leave of the budget: its
	// pod's start (its proxy gets a certificate) and reading its log.
	probeMargin = 20*time.Second + probeLogRead
	// probeMinCalls is the least time worth calling for.
	probeMinCalls = 10 * time.Second
	// probeServerShare is the least the servers' wait leaves the calls.
	probeServerShare = 30 * time.Second
	// Without a deadline: how long servers are waited for, and clients call.
	probeServerWait = 3 * time.Minute
	probeCalls      = 2 * time.Minute
)

// ProbeKey is cluster id as the probe's names hold it: the ID itself when
// it is a DNS-1123 label of at most 57 characters (so that probe-ID is a
// DNS-1035 label, a Service name); else its lower-cased letters, digits
// and dashes (anything else a dash), cut to 48 characters, a dash and the
// first 8 hex digits of the ID's SHA-256, so that two IDs never share one.
// It is also the value of the server pods' ProbeClusterLabel.
func ProbeKey(id string) string {
	if len(id) <= 63-len("probe-") && len(validation.IsDNS1123Label(id)) == 0 {
		return id
	}
	sum := sha256.Sum256([]byte(id))
	h := hex.EncodeToString(sum[:4])
	var b strings.Builder
	for _, r := range strings.ToLower(id) {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') || r == '-' {
			b.WriteRune(r)
		} else {
			b.WriteByte('-')
		}
	}
	s := b.String()
	if len(s) > 63-len("probe-")-1-len(h) {
		s = s[:63-len("probe-")-1-len(h)]
	}
	if s = strings.Trim(s, "-"); s == "" {
		return h
	}
	return s + "-" + h
}

// ProbeService is the Service, in every cluster, whose only endpoints are
// cluster id's probe pods.
func ProbeService(id string) string { return "probe-" + ProbeKey(id) }

// ProbeTarget is one wanted cluster and the URL that only it answers.
type ProbeTarget struct {
	Cluster, URL string
}

// ProbeTargets are the wanted clusters' URLs: the template with
// ProbeClusterPlaceholder replaced by each cluster's ProbeKey.
func ProbeTargets(urlTemplate string, want []string) ([]ProbeTarget, error) {
	if !strings.Contains(urlTemplate, ProbeClusterPlaceholder) {
		return nil, fmt.Errorf("--url %q: it must hold %s, where each wanted cluster's probe Service name goes (one URL for all would let the mesh answer every call from one cluster)", urlTemplate, ProbeClusterPlaceholder)
	}
	var out []ProbeTarget
	seen := map[string]bool{}
	for _, w := range want {
		if w = strings.TrimSpace(w); w == "" || seen[w] {
			continue
		}
		seen[w] = true
		u := strings.ReplaceAll(urlTemplate, ProbeClusterPlaceholder, ProbeKey(w))
		if _, err := url.Parse(u); err != nil {
			return nil, fmt.Errorf("--url %q for cluster %s: %w", urlTemplate, w, err)
		}
		out = append(out, ProbeTarget{Cluster: w, URL: u})
	}
	if len(out) == 0 {
		return nil, errors.New("--want names no cluster")
	}
	return out, nil
}

// ProbeResult is the one JSON line `isthmus check probe` prints.
type ProbeResult struct {
	// Answered counts, per wanted cluster, the calls to its URL that it
	// answered itself (the demo app's CLUSTER_NAME, servedBy.cluster).
	Answered  map[string]int `json:"answered"`
	Failed    int            `json:"failed"`
	LastError string         `json:"lastError"`
}

// Missing are the wanted clusters that never answered.
func (p *ProbeResult) Missing(want []string) []string {
	var out []string
	for _, w := range want {
		if p.Answered[w] == 0 {
			out = append(out, w)
		}
	}
	return out
}

// ProbeCalls calls every target's URL, all at once, each until it was
// answered by its own cluster or timeout passes, with pause between calls.
// Errors (the pod's own sidecar not ready yet, a 503 while endpoints
// arrive, an answer from another cluster) are counted and retried; the
// last error is that of a cluster that never answered, when one did not.
func ProbeCalls(ctx context.Context, targets []ProbeTarget, timeout, pause time.Duration) ProbeResult {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	// A new connection per call: a broken connection is not reused.
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	res := ProbeResult{Answered: map[string]int{}}
	var mu sync.Mutex
	var seq int
	lastErr := map[string]string{}
	lastAt := map[string]int{}
	var wg sync.WaitGroup
	for _, t := range targets {
		wg.Go(func() {
			for {
				got, err := probeOnce(ctx, client, t.URL)
				if ctx.Err() != nil {
					return // the deadline's own error says nothing of the path
				}
				if err == nil && got != t.Cluster {
					err = fmt.Errorf("answered by cluster %s, not %s", got, t.Cluster)
				}
				mu.Lock()
				if err == nil {
					res.Answered[t.Cluster]++
				} else {
					seq++
					res.Failed++
					res.LastError = t.Cluster + ": " + err.Error()
					lastErr[t.Cluster], lastAt[t.Cluster] = res.LastError, seq
				}
				mu.Unlock()
				if err == nil {
					return
				}
				select {
				case <-ctx.Done():
					return
				case <-time.After(pause):
				}
			}
		})
	}
	wg.Wait()
	best := 0
	for _, t := range targets {
		if res.Answered[t.Cluster] == 0 && lastAt[t.Cluster] > best {
			best, res.LastError = lastAt[t.Cluster], lastErr[t.Cluster]
		}
	}
	return res
}

func probeOnce(ctx context.Context, client *http.Client, u string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return "", err
	}
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(b)))
	}
	var p demoapp.Profile
	if err := json.Unmarshal(b, &p); err != nil {
		return "", fmt.Errorf("answer is not the demo app's profile: %w", err)
	}
	if p.ServedBy.Cluster == "" {
		return "", errors.New("answer names no cluster (CLUSTER_NAME unset)")
	}
	return p.ServedBy.Cluster, nil
}

// ParseProbeLog reads the probe client's result: the last line of its log
// that is a ProbeResult.
func ParseProbeLog(b []byte) (*ProbeResult, error) {
	var found *ProbeResult
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var res ProbeResult
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) > 0 && line[0] == '{' && json.Unmarshal(line, &res) == nil && res.Answered != nil {
			found = &res
		}
	}
	if found == nil {
		s := strings.TrimSpace(string(b))
		if len(s) > 300 {
			s = s[len(s)-300:]
		}
		return nil, fmt.Errorf("the probe's log holds no result: %q", s)
	}
	return found, nil
}

// probeOutcome is one cluster's part of the probe.
type probeOutcome struct {
	setupErr string
	// foreign: a namespace ProbeNamespace the check did not create is
	// there; nothing was touched.
	foreign     bool
	serverReady bool
	serverWhy   string
	clientErr   string
	result      *ProbeResult
	// denied is an RBAC refusal that kept the probe from running here.
	denied error
}

// probeRun is the cross-network probe: a server in every cluster, a
// Service per cluster in every cluster selecting only that cluster's
// server, then a client in every cluster calling each cluster's Service
// until it answered.
type probeRun struct {
	r        *run
	image    string
	clusters []*Cluster
	want     []string
	// calls is how long each client calls (its --timeout).
	calls   time.Duration
	mu      sync.Mutex
	outcome map[*Cluster]*probeOutcome
}

func (p *probeRun) out(c *Cluster) *probeOutcome {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.outcome[c] == nil {
		p.outcome[c] = &probeOutcome{}
	}
	return p.outcome[c]
}

// each runs fn for every cluster at once.
func (p *probeRun) each(cs []*Cluster, fn func(c *Cluster)) {
	var wg sync.WaitGroup
	for _, c := range cs {
		wg.Go(func() { fn(c) })
	}
	wg.Wait()
}

// foreignNamespace: ProbeNamespace exists without the check's label.
type foreignNamespace struct{ cluster string }

func (f foreignNamespace) Error() string {
	return fmt.Sprintf("a namespace %s exists in cluster %s that the check did not create (it lacks the label %s=%s the check puts on its own): the check leaves it and everything in it alone",
		ProbeNamespace, f.cluster, ManagedByLabel, ManagedBy)
}

// ranOut says why a wait of the probe ended early, detail after what it
// waited for: the check's budget (the context's deadline) or an
// interrupt; "" when neither (no deadline).
func ranOut(ctx context.Context, budget bool, while, detail string) string {
	switch {
	case errors.Is(ctx.Err(), context.Canceled):
		return "the check was interrupted while " + while + detail
	case budget:
		return "the check's --timeout ran out while " + while + detail + "; raise --timeout"
	}
	return ""
}

func (p *probeRun) run(ctx context.Context) {
	r := p.r
	p.outcome = map[*Cluster]*probeOutcome{}
	p.clusters = r.checked()
	defer p.cleanup(ctx)
	// Every cluster's Service must be its own.
	svcOf := map[string]string{}
	var clusters []*Cluster
	for _, c := range p.clusters {
		svc := ProbeService(c.Name())
		if other, dup := svcOf[svc]; dup {
			p.out(c).setupErr = fmt.Sprintf("its probe Service would be %s, as cluster %s's", svc, other)
			continue
		}
		svcOf[svc] = c.Name()
		clusters = append(clusters, c)
	}
	p.clusters = clusters
	r.say("probe: deploying %s/%s and a Service probe-CLUSTER per cluster in %d clusters (image %s)", ProbeNamespace, ProbeServer, len(p.clusters), p.image)
	p.each(p.clusters, func(c *Cluster) {
		if err := p.prepare(ctx, c); err != nil {
			o := p.out(c)
			o.setupErr = oneLine(err)
			o.foreign = errors.As(err, new(foreignNamespace))
			if _, ok := forbidden(err); ok {
				o.denied = err
			}
		}
	})
	// The servers get what the clients will not need of the time left.
	deadline, budget := ctx.Deadline()
	serverDeadline := time.Now().Add(probeServerWait)
	if budget {
		serverDeadline = deadline.Add(-(probeMargin + probeServerShare))
	}
	p.each(p.clusters, func(c *Cluster) {
		o := p.out(c)
		if o.setupErr != "" {
			return
		}
		o.serverReady, o.serverWhy, o.denied = p.waitServer(ctx, c, serverDeadline, budget)
	})
	var ready []*Cluster
	for _, c := range p.clusters {
		if p.out(c).serverReady {
			ready = append(ready, c)
			p.want = append(p.want, c.Name())
		}
	}
	if len(ready) == 0 {
		return
	}
	// Each client calls for the time the check has left, less what
	// starting its pod and reading its log take.
	p.calls = probeCalls
	if budget {
		left := (time.Until(deadline) - probeMargin).Truncate(time.Second)
		if left < probeMinCalls || ctx.Err() != nil {
			why := ranOut(ctx, budget, "waiting for the probe's servers", fmt.Sprintf(" (%s was left for the calls, less than %s)", max(left, 0), probeMinCalls))
			for _, c := range p.clusters {
				if o := p.out(c); o.setupErr == "" {
					o.clientErr = why
				}
			}
			return
		}
		p.calls = left
	}
	if limit := r.opts.ProbeTimeout; limit > 0 && p.calls > limit {
		p.calls = limit
	}
	r.say("probe: calling %s for %s from every cluster until each answered (up to %s)", ProbeURLTemplate, strings.Join(p.want, ", "), p.calls)
	p.each(p.clusters, func(c *Cluster) {
		o := p.out(c)
		if o.setupErr != "" {
			return
		}
		res, err := p.client(ctx, c, budget)
		if err != nil {
			o.clientErr = oneLine(err)
			if _, ok := forbidden(err); ok {
				o.denied = err
			}
			return
		}
		o.result = res
	})
}

// prepare deletes a leftover probe namespace (one carrying the check's
// label; any other is left alone and fails the probe in this cluster),
// then makes the namespace (labelled for injection), a Service per
// cluster and the Deployment.
func (p *probeRun) prepare(ctx context.Context, c *Cluster) error {
	r := p.r
	nss := c.Client.CoreV1().Namespaces()
	old, err := nss.Get(ctx, ProbeNamespace, metav1.GetOptions{})
	switch {
	case err == nil && old.Labels[ManagedByLabel] != ManagedBy:
		return foreignNamespace{cluster: c.Name()}
	case err == nil:
		r.say("probe: deleting the namespace %s a previous check left in %s", ProbeNamespace, c.Name())
		uid := old.UID
		if err := nss.Delete(ctx, ProbeNamespace, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}}); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("delete the leftover namespace %s: %w", ProbeNamespace, err)
		}
		for {
			_, err := nss.Get(ctx, ProbeNamespace, metav1.GetOptions{})
			if apierrors.IsNotFound(err) {
				break
			}
			if err := p.sleep(ctx); err != nil {
				return fmt.Errorf("the leftover namespace %s is still being deleted: %w", ProbeNamespace, err)
			}
		}
	case !apierrors.IsNotFound(err):
		return fmt.Errorf("read namespace %s: %w", ProbeNamespace, err)
	}
	objs := []func() error{
		func() error {
			_, err := nss.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ProbeNamespace,
				Labels: map[string]string{InjectionLabel: "enabled", ManagedByLabel: ManagedBy}}}, metav1.CreateOptions{})
			return err
		},
	}
	for _, to := range p.clusters {
		objs = append(objs, func() error {
			_, err := c.Client.CoreV1().Services(ProbeNamespace).Create(ctx, probeService(to.Name()), metav1.CreateOptions{})
			return err
		})
	}
	objs = append(objs, func() error {
		_, err := c.Client.AppsV1().Deployments(ProbeNamespace).Create(ctx, p.server(c), metav1.CreateOptions{})
		return err
	})
	for _, create := range objs {
		if err := create(); err != nil {
			return fmt.Errorf("create the probe's objects in %s: %w", ProbeNamespace, err)
		}
	}
	return nil
}

// probeLabels are cluster id's probe server pods' labels, which its
// Service selects.
func probeLabels(id string) map[string]string {
	return map[string]string{"app": ProbeServer, ProbeClusterLabel: ProbeKey(id)}
}

// probeService is cluster id's Service: in every cluster, selecting only
// id's probe pods, so that its endpoints are all in cluster id.
func probeService(id string) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: ProbeService(id), Namespace: ProbeNamespace, Labels: probeLabels(id)},
		Spec: corev1.ServiceSpec{Selector: probeLabels(id), Ports: []corev1.ServicePort{{Name: "http", Port: ProbePort,
			TargetPort: intstr.FromInt32(ProbePort), Protocol: corev1.ProtocolTCP}}},
	}
}

// securityContext is the probe containers': not root, no privilege
// escalation, no capability, the runtime's default seccomp profile.
func securityContext() *corev1.SecurityContext {
	return &corev1.SecurityContext{RunAsUser: ptr.To[int64](probeUID), RunAsGroup: ptr.To[int64](probeUID), RunAsNonRoot: ptr.To(true),
		AllowPrivilegeEscalation: ptr.To(false),
		Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
		SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault}}
}

// server is the probe Deployment: the demo app's profile, answering with
// the cluster's mesh ID, from the control plane's own image. Its pods
// mount no Kubernetes API token: the injector gives the proxy its own
// (the istio-token volume, audience istio-ca).
func (p *probeRun) server(c *Cluster) *appsv1.Deployment {
	labels := probeLabels(c.Name())
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: ProbeServer, Namespace: ProbeNamespace, Labels: labels},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To[int32](1),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					TerminationGracePeriodSeconds: ptr.To[int64](1),
					AutomountServiceAccountToken:  ptr.To(false),
					Containers: []corev1.Container{{
						Name: ProbeContainer, Image: p.image, Args: []string{"demo-app", "profile"},
						Env:             []corev1.EnvVar{{Name: "CLUSTER_NAME", Value: c.Name()}},
						Ports:           []corev1.ContainerPort{{Name: "http", ContainerPort: ProbePort, Protocol: corev1.ProtocolTCP}},
						ReadinessProbe:  &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromInt32(ProbePort)}}, PeriodSeconds: 2},
						SecurityContext: securityContext(),
					}},
				},
			},
		},
	}
}

func (p *probeRun) sleep(ctx context.Context) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(p.r.opts.Poll):
		return nil
	}
}

// waitServer waits for the probe Deployment's pod to be ready (its proxy
// too: the injector routes the readiness probe through it) until deadline.
// budget: the deadline is the check's own.
func (p *probeRun) waitServer(ctx context.Context, c *Cluster, deadline time.Time, budget bool) (ready bool, why string, denied error) {
	wctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	start := time.Now()
	for {
		d, err := c.Client.AppsV1().Deployments(ProbeNamespace).Get(wctx, ProbeServer, metav1.GetOptions{})
		if err == nil && d.Status.ReadyReplicas > 0 {
			return true, "", nil
		}
		if _, ok := forbidden(err); ok {
			return false, oneLine(err), err
		}
		if p.sleep(wctx) != nil {
			waited := time.Since(start).Round(time.Second)
			trouble := podTrouble(context.WithoutCancel(ctx), c, "app="+ProbeServer)
			if err != nil && wctx.Err() == nil {
				trouble = ": " + oneLine(err) + trouble
			}
			if s := ranOut(ctx, budget, "waiting for it to become ready", fmt.Sprintf(", after %s%s", waited, trouble)); s != "" {
				return false, s, nil
			}
			return false, fmt.Sprintf("not ready after %s%s", waited, trouble), nil
		}
	}
}

// podTrouble says why pods are not running or ready, from their status.
func podTrouble(ctx context.Context, c *Cluster, selector string) string {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	pods, err := c.Client.CoreV1().Pods(ProbeNamespace).List(ctx, metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		return ""
	}
	if len(pods.Items) == 0 {
		return " (no pod was created: see the ReplicaSet's events, e.g. the injection webhook refusing it)"
	}
	var out []string
	for _, pod := range pods.Items {
		var why []string
		for _, cond := range pod.Status.Conditions {
			if cond.Status != corev1.ConditionTrue && cond.Message != "" {
				why = append(why, cond.Message)
			}
		}
		for _, s := range append(append([]corev1.ContainerStatus{}, pod.Status.InitContainerStatuses...), pod.Status.ContainerStatuses...) {
			switch {
			case s.State.Waiting != nil && s.State.Waiting.Reason != "":
				why = append(why, fmt.Sprintf("%s: %s %s", s.Name, s.State.Waiting.Reason, s.State.Waiting.Message))
			case s.State.Terminated != nil && s.State.Terminated.ExitCode != 0:
				why = append(why, fmt.Sprintf("%s: exited %d %s", s.Name, s.State.Terminated.ExitCode, s.State.Terminated.Reason))
			case s.State.Running != nil && !s.Ready:
				why = append(why, s.Name+": running, not ready")
			}
		}
		out = append(out, fmt.Sprintf("%s %s: %s", pod.Name, pod.Status.Phase, strings.TrimSpace(strings.Join(why, "; "))))
	}
	return " (" + strings.Join(out, "; ") + ")"
}

// client runs the probe client Pod in a cluster, waits for its probe
// container to end and reads its result from the log.
func (p *probeRun) client(ctx context.Context, c *Cluster, budget bool) (*ProbeResult, error) {
	pods := c.Client.CoreV1().Pods(ProbeNamespace)
	args := []string{"check", "probe", "--url", ProbeURLTemplate, "--want", strings.Join(p.want, ","), "--timeout", p.calls.String()}
	_, err := pods.Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: ProbeClient, Namespace: ProbeNamespace, Labels: map[string]string{"app": ProbeClient}},
		Spec: corev1.PodSpec{
			RestartPolicy:                 corev1.RestartPolicyNever,
			TerminationGracePeriodSeconds: ptr.To[int64](1),
			AutomountServiceAccountToken:  ptr.To(false),
			Containers: []corev1.Container{{Name: ProbeContainer, Image: p.image, Args: args,
				SecurityContext: securityContext()}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("create the probe client pod: %w", err)
	}
	// The client's own proxy must start (image pulled, certificate), then
	// it calls for up to p.calls; the check keeps time to read its log.
	wait := time.Now().Add(p.calls + 60*time.Second)
	if d, ok := ctx.Deadline(); ok {
		wait = d.Add(-probeLogRead)
	}
	wctx, cancel := context.WithDeadline(ctx, wait)
	defer cancel()
	for {
		pod, err := pods.Get(wctx, ProbeClient, metav1.GetOptions{})
		if err == nil && probeEnded(pod) {
			break
		}
		if _, ok := forbidden(err); ok {
			return nil, fmt.Errorf("read the probe client pod: %w", err)
		}
		if p.sleep(wctx) != nil {
			trouble := podTrouble(context.WithoutCancel(ctx), c, "app="+ProbeClient)
			if s := ranOut(ctx, budget, "waiting for the probe client to finish", fmt.Sprintf(" (it calls for up to %s once its own proxy is ready)%s", p.calls, trouble)); s != "" {
				return nil, errors.New(s)
			}
			return nil, fmt.Errorf("the probe client did not finish%s", trouble)
		}
	}
	lctx, lcancel := context.WithTimeout(context.WithoutCancel(ctx), probeLogRead)
	defer lcancel()
	b, err := pods.GetLogs(ProbeClient, &corev1.PodLogOptions{Container: ProbeContainer}).DoRaw(lctx)
	if err != nil {
		return nil, fmt.Errorf("read the probe client's log: %w", err)
	}
	return ParseProbeLog(b)
}

// probeEnded: the probe container terminated (the pod itself keeps
// running: its proxy is a plain container).
func probeEnded(pod *corev1.Pod) bool {
	if pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
		return true
	}
	for _, s := range pod.Status.ContainerStatuses {
		if s.Name == ProbeContainer && s.State.Terminated != nil {
			return true
		}
	}
	return false
}

// cleanup deletes the probe namespace in every cluster where it carries
// the check's label (never another), also when the check was interrupted
// (its context is then done).
func (p *probeRun) cleanup(ctx context.Context) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	p.r.say("probe: deleting the namespace %s where the check created it", ProbeNamespace)
	p.each(p.clusters, func(c *Cluster) {
		nss := c.Client.CoreV1().Namespaces()
		ns, err := nss.Get(ctx, ProbeNamespace, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			return
		case err == nil && (ns.Labels[ManagedByLabel] != ManagedBy || ns.DeletionTimestamp != nil):
			return // not the check's, or already going
		case err == nil:
			uid := ns.UID
			err = nss.Delete(ctx, ProbeNamespace, metav1.DeleteOptions{PropagationPolicy: ptr.To(metav1.DeletePropagationBackground),
				Preconditions: &metav1.Preconditions{UID: &uid}})
		}
		if err != nil && !apierrors.IsNotFound(err) {
			p.r.say("probe: could not delete the namespace %s in %s: %v (delete it: kubectl --context %s delete namespace %s)", ProbeNamespace, c.Name(), err, ctxName(c), ProbeNamespace)
		}
	})
}

// report turns the outcomes into rows and findings.
func (p *probeRun) report(networks map[*Cluster]string) {
	r := p.r
	netOf := map[string]string{}
	for c, n := range networks {
		netOf[c.Name()] = n
	}
	in := map[*Cluster]bool{}
	for _, c := range r.checked() {
		in[c] = true
	}
	for _, c := range r.mesh.clusters() {
		if !in[c] {
			r.row(CheckCrossNetwork, c, StatusSkipped, "%s", skipWhy(c, r.reachable[c]))
			continue
		}
		o := p.out(c)
		fixPods := fmt.Sprintf("kubectl --context %s -n %s describe pods; every cluster must pull the control plane's image %s", ctxName(c), ProbeNamespace, p.image)
		if o.denied != nil {
			// Not a finding about the mesh: the probe could not run here.
			r.checkFailed(CheckCrossNetwork, c, o.denied)
			continue
		}
		switch {
		case o.foreign:
			r.find(Finding{Code: CodeProbeFailed, Severity: SeverityError, Cluster: c.Name(), Subject: "namespace " + ProbeNamespace,
				Message: fmt.Sprintf("the probe could not be set up in cluster %s: %s", c.Name(), o.setupErr),
				Fix: fmt.Sprintf("if the namespace is yours, run the check with --probe=false; if it is a probe's leftover, look at it and delete it yourself: kubectl --context %s get all -n %s; kubectl --context %s delete namespace %s",
					ctxName(c), ProbeNamespace, ctxName(c), ProbeNamespace)})
			r.row(CheckCrossNetwork, c, StatusError, "probe not set up: namespace %s is not the check's", ProbeNamespace)
			continue
		case o.setupErr != "":
			r.find(Finding{Code: CodeProbeFailed, Severity: SeverityError, Cluster: c.Name(), Subject: "namespace " + ProbeNamespace,
				Message: fmt.Sprintf("the probe could not be set up in cluster %s: %s", c.Name(), o.setupErr),
				Fix:     fmt.Sprintf("the check creates and deletes the namespace %s, Services, a Deployment and a Pod in it, and reads pods/log, with context %s's credentials", ProbeNamespace, ctxName(c))})
			r.row(CheckCrossNetwork, c, StatusError, "probe not set up")
			continue
		case !o.serverReady:
			r.find(Finding{Code: CodeProbeFailed, Severity: SeverityError, Cluster: c.Name(), Subject: "deployment " + ProbeNamespace + "/" + ProbeServer,
				Message: fmt.Sprintf("the probe's server in cluster %s (%s/%s, with a sidecar) did not become ready: %s; no cluster's calls to it were checked", c.Name(), ProbeNamespace, ProbeServer, o.serverWhy),
				Fix:     fixPods})
		}
		switch {
		case len(p.want) == 0:
			r.row(CheckCrossNetwork, c, StatusError, "no probe server became ready")
		case o.clientErr != "":
			r.find(Finding{Code: CodeProbeFailed, Severity: SeverityError, Cluster: c.Name(), Subject: "pod " + ProbeNamespace + "/" + ProbeClient,
				Message: fmt.Sprintf("the probe's client in cluster %s did not give a result: %s", c.Name(), o.clientErr),
				Fix:     fixPods})
			r.row(CheckCrossNetwork, c, StatusError, "probe client failed")
		case o.result != nil:
			fs := Unreachable(c.Name(), o.result, p.want, netOf, p.calls)
			for _, f := range fs {
				r.find(f)
			}
			var parts []string
			for _, w := range p.want {
				parts = append(parts, fmt.Sprintf("%s %d", w, o.result.Answered[w]))
			}
			detail := "answers: " + strings.Join(parts, ", ")
			if m := o.result.Missing(p.want); len(m) > 0 {
				detail += "; unreachable: " + strings.Join(m, ", ")
			}
			if !o.serverReady {
				detail = "own probe server not ready; " + detail
			}
			st := StatusOK
			if len(fs) > 0 || !o.serverReady {
				st = StatusError
			}
			r.row(CheckCrossNetwork, c, st, "%s", detail)
		}
	}
}

// Unreachable are the findings of one probe client's result: each wanted
// cluster that never answered from cluster from.
func Unreachable(from string, res *ProbeResult, want []string, netOf map[string]string, timeout time.Duration) []Finding {
	var out []Finding
	missing := res.Missing(want)
	sort.Strings(missing)
	for _, to := range missing {
		nf, nt := netOf[from], netOf[to]
		var msg, fix string
		switch {
		case to == from:
			msg = fmt.Sprintf("from cluster %s, its own probe never answered in %s at Service %s.%s (%d calls failed, last error: %s)", from, timeout, ProbeService(to), ProbeNamespace, res.Failed, orNone(res.LastError))
			fix = fmt.Sprintf("the probe pods' proxies in %s: kubectl -n %s logs deploy/%s -c istio-proxy; isthmus proxy-config endpoints pod/%s.%s", from, ProbeNamespace, ProbeServer, ProbeClient, ProbeNamespace)
		case nf != nt || nf == "":
			msg = fmt.Sprintf("from cluster %s (network %s), cluster %s's probe (network %s) never answered in %s at Service %s.%s, whose only endpoints are in %s (%d calls failed, last error: %s): calls between these networks fail",
				from, orDash(nf), to, orDash(nt), timeout, ProbeService(to), ProbeNamespace, to, res.Failed, orNone(res.LastError))
			fix = fmt.Sprintf("check the east-west gateway of network %s (an address, ready endpoints, port 15443 open from network %s, the expose-services Gateway), that the control plane watches %s (isthmus remote-clusters: its remote secret) and what %s's sidecars get: isthmus proxy-config endpoints on a pod of %s",
				orDash(nt), orDash(nf), to, from, from)
		default:
			msg = fmt.Sprintf("from cluster %s, cluster %s's probe (both on network %s) never answered in %s at Service %s.%s, whose only endpoints are in %s (%d calls failed, last error: %s)", from, to, nf, timeout, ProbeService(to), ProbeNamespace, to, res.Failed, orNone(res.LastError))
			fix = fmt.Sprintf("clusters of one network reach each other's pods directly: check the pod network between them and that the control plane watches %s (isthmus remote-clusters)", to)
		}
		out = append(out, Finding{Code: CodeCrossNetworkUnreachable, Severity: SeverityError, Cluster: from, Subject: from + " -> " + to, Message: msg, Fix: fix})
	}
	return out
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
