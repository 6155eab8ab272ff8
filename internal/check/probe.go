package check

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/isthmus-mesh/isthmus/internal/demoapp"
)

// The probe's objects, in every cluster.
const (
	ProbeNamespace = "isthmus-check"
	// ProbeServer is the Service and Deployment answering /profile.
	ProbeServer = "probe"
	// ProbeClient is the Pod that calls it, and its container is ProbeContainer.
	ProbeClient    = "probe-client"
	ProbeContainer = "probe"
	ProbePort      = 8080
	// ProbeURL is what every client calls: its own cluster's Service,
	// whose endpoints the mesh spreads over every cluster.
	ProbeURL = "http://probe." + ProbeNamespace + ":8080/profile?id=1"
	// probeUID runs the probe's containers: not the proxy's 1337, whose
	// traffic the sidecar does not capture (the demo-app image's user).
	probeUID = 65532
)

// ProbeResult is the one JSON line `isthmus check probe` prints.
type ProbeResult struct {
	// Answered counts the answers per cluster (the demo app's CLUSTER_NAME).
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

// ProbeCalls calls url until every wanted cluster has answered or timeout
// passes, with pause between calls. Errors (the pod's own sidecar not
// ready yet, a 503 while endpoints arrive) are counted and retried.
func ProbeCalls(ctx context.Context, url string, want []string, timeout, pause time.Duration) ProbeResult {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	// A new connection per call: the sidecar balances per request anyway,
	// and a broken connection is not reused.
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	res := ProbeResult{Answered: map[string]int{}}
	for len(res.Missing(want)) > 0 {
		cluster, err := probeOnce(ctx, client, url)
		switch {
		case ctx.Err() != nil:
			return res // the deadline's own error says nothing of the path
		case err != nil:
			res.Failed++
			res.LastError = err.Error()
		default:
			res.Answered[cluster]++
		}
		if len(res.Missing(want)) == 0 {
			break
		}
		select {
		case <-ctx.Done():
			return res
		case <-time.After(pause):
		}
	}
	return res
}

func probeOnce(ctx context.Context, client *http.Client, url string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
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
	setupErr    string
	serverReady bool
	serverWhy   string
	clientErr   string
	result      *ProbeResult
}

// probeRun is the cross-network probe: a server in every cluster, then a
// client in every cluster calling until each server answered.
type probeRun struct {
	r        *run
	image    string
	clusters []*Cluster
	want     []string
	mu       sync.Mutex
	outcome  map[*Cluster]*probeOutcome
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

func (p *probeRun) run(ctx context.Context) {
	r := p.r
	p.outcome = map[*Cluster]*probeOutcome{}
	p.clusters = r.checked()
	defer p.cleanup(ctx)
	r.say("probe: deploying %s/%s in %d clusters (image %s)", ProbeNamespace, ProbeServer, len(p.clusters), p.image)
	p.each(p.clusters, func(c *Cluster) {
		if err := p.prepare(ctx, c); err != nil {
			p.out(c).setupErr = oneLine(err)
		}
	})
	// The servers get what the clients will not need of the time left.
	serverDeadline := time.Now().Add(3 * time.Minute)
	if d, ok := ctx.Deadline(); ok {
		serverDeadline = d.Add(-(r.opts.ProbeTimeout + 15*time.Second))
		if until := time.Until(serverDeadline); until < 20*time.Second {
			serverDeadline = time.Now().Add(20 * time.Second)
		}
	}
	var ready []*Cluster
	p.each(p.clusters, func(c *Cluster) {
		o := p.out(c)
		if o.setupErr != "" {
			return
		}
		o.serverReady, o.serverWhy = p.waitServer(ctx, c, serverDeadline)
	})
	for _, c := range p.clusters {
		o := p.out(c)
		if o.serverReady {
			ready = append(ready, c)
			p.want = append(p.want, c.Name())
		}
	}
	if len(ready) == 0 {
		return
	}
	r.say("probe: calling %s from every cluster until %s answered (up to %s)", ProbeURL, strings.Join(p.want, ", "), r.opts.ProbeTimeout)
	p.each(p.clusters, func(c *Cluster) {
		o := p.out(c)
		if o.setupErr != "" {
			return
		}
		res, err := p.client(ctx, c)
		if err != nil {
			o.clientErr = oneLine(err)
			return
		}
		o.result = res
	})
}

// prepare deletes a leftover probe namespace, then makes the namespace
// (labelled for injection), the Service and the Deployment.
func (p *probeRun) prepare(ctx context.Context, c *Cluster) error {
	r := p.r
	nss := c.Client.CoreV1().Namespaces()
	if _, err := nss.Get(ctx, ProbeNamespace, metav1.GetOptions{}); err == nil {
		r.say("probe: deleting the namespace %s a previous check left in %s", ProbeNamespace, c.Name())
		if err := nss.Delete(ctx, ProbeNamespace, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
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
	} else if !apierrors.IsNotFound(err) {
		return fmt.Errorf("read namespace %s: %w", ProbeNamespace, err)
	}
	labels := map[string]string{"app": ProbeServer}
	objs := []func() error{
		func() error {
			_, err := nss.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ProbeNamespace,
				Labels: map[string]string{InjectionLabel: "enabled", "app.kubernetes.io/managed-by": "isthmus-check"}}}, metav1.CreateOptions{})
			return err
		},
		func() error {
			_, err := c.Client.CoreV1().Services(ProbeNamespace).Create(ctx, &corev1.Service{
				ObjectMeta: metav1.ObjectMeta{Name: ProbeServer, Namespace: ProbeNamespace, Labels: labels},
				Spec: corev1.ServiceSpec{Selector: labels, Ports: []corev1.ServicePort{{Name: "http", Port: ProbePort,
					TargetPort: intstr.FromInt32(ProbePort), Protocol: corev1.ProtocolTCP}}},
			}, metav1.CreateOptions{})
			return err
		},
		func() error {
			_, err := c.Client.AppsV1().Deployments(ProbeNamespace).Create(ctx, p.server(c), metav1.CreateOptions{})
			return err
		},
	}
	for _, create := range objs {
		if err := create(); err != nil {
			return fmt.Errorf("create the probe's objects in %s: %w", ProbeNamespace, err)
		}
	}
	return nil
}

func securityContext() *corev1.SecurityContext {
	return &corev1.SecurityContext{RunAsUser: ptr.To[int64](probeUID), RunAsGroup: ptr.To[int64](probeUID), RunAsNonRoot: ptr.To(true),
		AllowPrivilegeEscalation: ptr.To(false)}
}

// server is the probe Deployment: the demo app's profile, answering with
// the cluster's mesh ID, from the control plane's own image.
func (p *probeRun) server(c *Cluster) *appsv1.Deployment {
	labels := map[string]string{"app": ProbeServer}
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: ProbeServer, Namespace: ProbeNamespace, Labels: labels},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To[int32](1),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					TerminationGracePeriodSeconds: ptr.To[int64](1),
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
// too: the injector routes the readiness probe through it).
func (p *probeRun) waitServer(ctx context.Context, c *Cluster, deadline time.Time) (bool, string) {
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	start := time.Now()
	for {
		d, err := c.Client.AppsV1().Deployments(ProbeNamespace).Get(ctx, ProbeServer, metav1.GetOptions{})
		if err == nil && d.Status.ReadyReplicas > 0 {
			return true, ""
		}
		if p.sleep(ctx) != nil {
			why := fmt.Sprintf("not ready after %s", time.Since(start).Round(time.Second))
			if err != nil {
				why += ": " + oneLine(err)
			}
			return false, why + podTrouble(context.WithoutCancel(ctx), c, "app="+ProbeServer)
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
func (p *probeRun) client(ctx context.Context, c *Cluster) (*ProbeResult, error) {
	r := p.r
	pods := c.Client.CoreV1().Pods(ProbeNamespace)
	args := []string{"check", "probe", "--url", ProbeURL, "--want", strings.Join(p.want, ","), "--timeout", r.opts.ProbeTimeout.String()}
	_, err := pods.Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: ProbeClient, Namespace: ProbeNamespace, Labels: map[string]string{"app": ProbeClient}},
		Spec: corev1.PodSpec{
			RestartPolicy:                 corev1.RestartPolicyNever,
			TerminationGracePeriodSeconds: ptr.To[int64](1),
			Containers: []corev1.Container{{Name: ProbeContainer, Image: p.image, Args: args,
				SecurityContext: securityContext()}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("create the probe client pod: %w", err)
	}
	// The client's own proxy must start (image pulled, certificate), then
	// it calls for up to ProbeTimeout.
	wctx, cancel := context.WithTimeout(ctx, r.opts.ProbeTimeout+60*time.Second)
	defer cancel()
	for {
		pod, err := pods.Get(wctx, ProbeClient, metav1.GetOptions{})
		if err == nil && probeEnded(pod) {
			break
		}
		if p.sleep(wctx) != nil {
			return nil, fmt.Errorf("the probe client did not finish%s", podTrouble(context.WithoutCancel(ctx), c, "app="+ProbeClient))
		}
	}
	b, err := pods.GetLogs(ProbeClient, &corev1.PodLogOptions{Container: ProbeContainer}).DoRaw(ctx)
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

// cleanup deletes the probe namespace in every cluster, also when the
// check was interrupted (its context is then done).
func (p *probeRun) cleanup(ctx context.Context) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	p.r.say("probe: deleting the namespace %s in %d clusters", ProbeNamespace, len(p.clusters))
	p.each(p.clusters, func(c *Cluster) {
		err := c.Client.CoreV1().Namespaces().Delete(ctx, ProbeNamespace, metav1.DeleteOptions{PropagationPolicy: ptr.To(metav1.DeletePropagationBackground)})
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
	for _, c := range p.clusters {
		in[c] = true
	}
	for _, c := range r.mesh.clusters() {
		if !in[c] {
			r.row(CheckCrossNetwork, c, StatusSkipped, "%s", skipWhy(c, r.reachable[c]))
			continue
		}
		o := p.out(c)
		fixPods := fmt.Sprintf("kubectl --context %s -n %s describe pods; every cluster must pull the control plane's image %s", ctxName(c), ProbeNamespace, p.image)
		switch {
		case o.setupErr != "":
			r.find(Finding{Code: CodeProbeFailed, Severity: SeverityError, Cluster: c.Name(), Subject: "namespace " + ProbeNamespace,
				Message: fmt.Sprintf("the probe could not be set up in cluster %s: %s", c.Name(), o.setupErr),
				Fix:     fmt.Sprintf("the check creates and deletes the namespace %s, a Service, a Deployment and a Pod in it, and reads pods/log, with context %s's credentials", ProbeNamespace, ctxName(c))})
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
			fs := Unreachable(c.Name(), o.result, p.want, netOf, r.opts.ProbeTimeout)
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
			msg = fmt.Sprintf("from cluster %s, its own probe never answered in %s (%d calls failed, last error: %s)", from, timeout, res.Failed, orNone(res.LastError))
			fix = fmt.Sprintf("the probe pods' proxies in %s: kubectl -n %s logs deploy/%s -c istio-proxy; isthmus proxy-config endpoints pod/%s.%s", from, ProbeNamespace, ProbeServer, ProbeClient, ProbeNamespace)
		case nf != nt || nf == "":
			msg = fmt.Sprintf("from cluster %s (network %s), cluster %s's probe (network %s) never answered in %s (%d calls failed, last error: %s): calls between these networks fail",
				from, orDash(nf), to, orDash(nt), timeout, res.Failed, orNone(res.LastError))
			fix = fmt.Sprintf("check the east-west gateway of network %s (an address, ready endpoints, port 15443 open from network %s, the expose-services Gateway), that the control plane watches %s (isthmus remote-clusters: its remote secret) and what %s's sidecars get: isthmus proxy-config endpoints on a pod of %s",
				orDash(nt), orDash(nf), to, from, from)
		default:
			msg = fmt.Sprintf("from cluster %s, cluster %s's probe (both on network %s) never answered in %s (%d calls failed, last error: %s)", from, to, nf, timeout, res.Failed, orNone(res.LastError))
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
