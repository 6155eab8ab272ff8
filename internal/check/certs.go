package check

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/isthmus-mesh/isthmus/internal/discovery/ca"
	"github.com/isthmus-mesh/isthmus/internal/discovery/inject"
	"github.com/isthmus-mesh/isthmus/internal/discovery/rootcert"
	"github.com/isthmus-mesh/isthmus/internal/inspect"
)

// Thresholds of the certificate checks.
const (
	RootExpiryWarning = 30 * 24 * time.Hour
	// WorkloadLifeLeftWarning is the share of a workload certificate's
	// lifetime (NotAfter - NotBefore) below which what is left is a
	// warning: a proxy renews at 80% of it, so a healthy one never has
	// less than 20% left, whatever the certificates' TTL.
	WorkloadLifeLeftWarning = 0.2
	// adminPort is the proxy's admin interface (config_dump).
	adminPort = 15000
)

// injectedPods are a cluster's running pods the injector gave a proxy
// (annotation sidecar.istio.io/status), the probe's namespace left out,
// sorted by namespace and name.
func injectedPods(ctx context.Context, c *Cluster) ([]corev1.Pod, error) {
	list, err := c.Client.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list pods: %w", err)
	}
	var out []corev1.Pod
	for _, p := range list.Items {
		if _, ok := p.Annotations[inject.AnnotationStatus]; !ok || p.Namespace == ProbeNamespace || p.DeletionTimestamp != nil {
			continue
		}
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Namespace != out[j].Namespace {
			return out[i].Namespace < out[j].Namespace
		}
		return out[i].Name < out[j].Name
	})
	return out, nil
}

func sameCerts(a, b []*x509.Certificate) bool {
	key := func(list []*x509.Certificate) []string {
		var out []string
		for _, c := range list {
			out = append(out, string(c.Raw))
		}
		sort.Strings(out)
		return dedupe(out)
	}
	ka, kb := key(a), key(b)
	if len(ka) != len(kb) {
		return false
	}
	for i := range ka {
		if ka[i] != kb[i] {
			return false
		}
	}
	return true
}

// describeCerts names certificates by subject and the start of their SHA-256.
func describeCerts(list []*x509.Certificate) string {
	if len(list) == 0 {
		return "no certificate"
	}
	var out []string
	for _, c := range list {
		sum := sha256.Sum256(c.Raw)
		out = append(out, fmt.Sprintf("%q (SHA-256 %s…)", c.Subject.String(), strings.ToUpper(hex.EncodeToString(sum[:6]))))
	}
	return strings.Join(out, ", ")
}

// caRoots reads the CA's roots where package ca keeps them: the plug-in
// Secret cacerts (root-cert.pem), else istio-ca-secret (root-cert.pem,
// else its ca-cert.pem). Where says which; an error when neither can be read.
func (r *run) caRoots(ctx context.Context) (roots []*x509.Certificate, where string, err error) {
	p, ns := r.mesh.Primary, r.mesh.Namespace
	secrets := p.Client.CoreV1().Secrets(ns)
	plug, err := secrets.Get(ctx, ca.PluginSecret, metav1.GetOptions{})
	switch {
	case err == nil:
		return inspect.Certificates(plug.Data[ca.RootCertKey]), ns + "/" + ca.PluginSecret, nil
	case !apierrors.IsNotFound(err):
		return nil, "", fmt.Errorf("read Secret %s/%s: %w", ns, ca.PluginSecret, err)
	}
	own, err := secrets.Get(ctx, ca.SelfSignedSecret, metav1.GetOptions{})
	if err != nil {
		return nil, ns + "/" + ca.SelfSignedSecret, err
	}
	b := own.Data[ca.RootCertKey]
	if len(bytes.TrimSpace(b)) == 0 {
		b = own.Data[ca.CACertKey]
	}
	return inspect.Certificates(b), ns + "/" + ca.SelfSignedSecret, nil
}

// rootCerts compares the CA's root with istio-ca-root-cert in every
// namespace that runs injected pods, in every cluster, and checks the
// root's expiry.
func (r *run) rootCerts(ctx context.Context) {
	p, ns := r.mesh.Primary, r.mesh.Namespace
	roots, where, err := r.caRoots(ctx)
	refNote := ""
	switch {
	case apierrors.IsNotFound(err):
		r.find(Finding{Code: CodeRootCertMissing, Severity: SeverityError, Cluster: p.Name(), Subject: where,
			Message: fmt.Sprintf("the control plane's CA has no root: neither Secret %s/%s nor %s exists in the primary", ns, ca.PluginSecret, where),
			Fix:     fmt.Sprintf("the control plane creates %s when it first starts (or put your plug-in CA in %s/%s); check it runs: kubectl --context %s -n %s logs -l app=istiod", where, ns, ca.PluginSecret, ctxName(p), ns)})
	case err != nil:
		// The CA's Secret is not readable (RBAC): compare the clusters with
		// the primary's own istio-ca-root-cert.
		cm, cmErr := p.Client.CoreV1().ConfigMaps(ns).Get(ctx, rootcert.ConfigMapName, metav1.GetOptions{})
		if cmErr != nil {
			// Wrapped: a ConfigMap the credentials may not read is what the
			// check lacks (it reads the CA's Secret only when it may).
			r.checkFailed(CheckRootCert, p, fmt.Errorf("%v; and ConfigMap %s/%s: %w", err, ns, rootcert.ConfigMapName, cmErr))
			for _, c := range r.mesh.Remotes {
				r.row(CheckRootCert, c, StatusUnknown, "the CA's root could not be read")
			}
			return
		}
		roots, where = inspect.Certificates([]byte(cm.Data[rootcert.Key])), ns+"/"+rootcert.ConfigMapName
		refNote = fmt.Sprintf(" (the CA's Secret is not readable: %s; compared with the primary's %s)", oneLine(err), where)
	}
	if err == nil && len(roots) == 0 {
		r.find(Finding{Code: CodeRootCertMissing, Severity: SeverityError, Cluster: p.Name(), Subject: where,
			Message: fmt.Sprintf("the CA's Secret %s holds no PEM root certificate", where),
			Fix:     fmt.Sprintf("fix %s (%s, or for istio-ca-secret delete it to have a new root made: every workload then needs new certificates)", where, ca.RootCertKey)})
	}
	expiry := ""
	if len(roots) > 0 {
		now := r.opts.Now()
		first := roots[0]
		for _, root := range roots {
			if root.NotAfter.Before(first.NotAfter) {
				first = root
			}
			left := root.NotAfter.Sub(now)
			if left >= RootExpiryWarning {
				continue
			}
			sev, when := SeverityWarning, fmt.Sprintf("expires %s (in %s)", root.NotAfter.UTC().Format(time.RFC3339), days(left))
			if left <= 0 {
				sev, when = SeverityError, fmt.Sprintf("expired %s", root.NotAfter.UTC().Format(time.RFC3339))
			}
			r.find(Finding{Code: CodeRootCertExpiring, Severity: sev, Cluster: p.Name(), Subject: where,
				Message: fmt.Sprintf("the mesh's root certificate %s %s: after that no workload certificate verifies and mutual TLS fails everywhere", describeCerts([]*x509.Certificate{root}), when),
				Fix:     "rotate the root before then (README, Workload identity: add the new root beside the old one in every cluster's cacerts, switch the intermediates, then drop the old root)"})
		}
		expiry = fmt.Sprintf("root %q expires %s", first.Subject.String(), first.NotAfter.UTC().Format("2006-01-02"))
	}
	for _, c := range r.mesh.clusters() {
		if c.Client == nil || !r.reachable[c] {
			r.row(CheckRootCert, c, StatusSkipped, "%s", skipWhy(c, r.reachable[c]))
			continue
		}
		if len(roots) == 0 {
			r.row(CheckRootCert, c, StatusUnknown, "the CA has no root to compare with")
			continue
		}
		r.clusterRoots(ctx, c, roots, where, expiry+refNote)
	}
}

func (r *run) clusterRoots(ctx context.Context, c *Cluster, roots []*x509.Certificate, where, note string) {
	pods, err := injectedPods(ctx, c)
	if err != nil {
		r.checkFailed(CheckRootCert, c, err)
		return
	}
	nss := map[string]bool{}
	for _, p := range pods {
		nss[p.Namespace] = true
	}
	names := make([]string, 0, len(nss))
	for n := range nss {
		names = append(names, n)
	}
	sort.Strings(names)
	bad := 0
	fix := fmt.Sprintf("the control plane's leader writes %s into every namespace of every cluster it manages (a remote only while its %s namespace names the primary in topology.istio.io/controlPlaneClusters); see the leader's log, and delete the ConfigMap to have it rewritten", rootcert.ConfigMapName, r.mesh.Namespace)
	for _, ns := range names {
		cm, err := c.Client.CoreV1().ConfigMaps(ns).Get(ctx, rootcert.ConfigMapName, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			bad++
			r.find(Finding{Code: CodeRootCertMissing, Severity: SeverityError, Cluster: c.Name(), Subject: ns + "/" + rootcert.ConfigMapName,
				Message: fmt.Sprintf("namespace %s of cluster %s runs injected pods but has no ConfigMap %s: its new pods cannot start (their proxy mounts it to verify the control plane)", ns, c.Name(), rootcert.ConfigMapName),
				Fix:     fix})
			continue
		}
		if err != nil {
			r.checkFailed(CheckRootCert, c, err)
			return
		}
		have := inspect.Certificates([]byte(cm.Data[rootcert.Key]))
		if !sameCerts(have, roots) {
			bad++
			r.find(Finding{Code: CodeRootCertMismatch, Severity: SeverityError, Cluster: c.Name(), Subject: ns + "/" + rootcert.ConfigMapName,
				Message: fmt.Sprintf("%s/%s in cluster %s holds %s, not the CA's root %s (%s): its proxies cannot verify the control plane, nor peers whose certificates the CA signs",
					ns, rootcert.ConfigMapName, c.Name(), describeCerts(have), describeCerts(roots), where),
				Fix: fix})
		}
	}
	switch {
	case bad > 0:
		r.row(CheckRootCert, c, StatusError, "%d of %d namespaces with injected pods lack the CA's root", bad, len(names))
	case len(names) == 0:
		r.row(CheckRootCert, c, StatusOK, "no injected pods; %s", note)
	default:
		r.row(CheckRootCert, c, StatusOK, "%d namespaces hold the CA's root; %s", len(names), note)
	}
}

// workloadCerts reads the workload certificate of up to CertCap injected
// pods per cluster from their proxy's config_dump.
func (r *run) workloadCerts(ctx context.Context) {
	for _, c := range r.mesh.clusters() {
		if c.Client == nil || !r.reachable[c] || c.Pods == nil {
			why := skipWhy(c, r.reachable[c])
			if why == "" {
				why = "no port-forward to its pods"
			}
			r.row(CheckWorkloadCert, c, StatusSkipped, "%s", why)
			continue
		}
		pods, err := injectedPods(ctx, c)
		if err != nil {
			r.checkFailed(CheckWorkloadCert, c, err)
			continue
		}
		var running []corev1.Pod
		for _, p := range pods {
			if p.Status.Phase == corev1.PodRunning && proxyReady(&p) {
				running = append(running, p)
			}
		}
		total := len(running)
		if len(running) > r.opts.CertCap {
			running = running[:r.opts.CertCap]
		}
		if total == 0 {
			r.row(CheckWorkloadCert, c, StatusOK, "no running injected pods")
			continue
		}
		r.say("reading the workload certificates of %d proxies in %s (port-forward)", len(running), c.Name())
		type answer struct {
			cert *x509.Certificate
			err  error
		}
		answers := make([]answer, len(running))
		var wg sync.WaitGroup
		sem := make(chan struct{}, 4)
		for i := range running {
			wg.Go(func() {
				sem <- struct{}{}
				defer func() { <-sem }()
				b, err := c.Pods.Get(ctx, &running[i], adminPort, "/config_dump")
				if err != nil {
					answers[i].err = err
					return
				}
				d, err := inspect.ParseDump(b)
				if err != nil {
					answers[i].err = err
					return
				}
				answers[i].cert, answers[i].err = d.WorkloadCertificate()
			})
		}
		wg.Wait()
		now := r.opts.Now()
		var earliest time.Time
		var unreadable []string
		expiring, expired := 0, 0
		for i, a := range answers {
			pod := &running[i]
			name := pod.Name + "." + pod.Namespace
			if a.err != nil {
				unreadable = append(unreadable, fmt.Sprintf("%s: %s", name, oneLine(a.err)))
				continue
			}
			if earliest.IsZero() || a.cert.NotAfter.Before(earliest) {
				earliest = a.cert.NotAfter
			}
			left, life := a.cert.NotAfter.Sub(now), a.cert.NotAfter.Sub(a.cert.NotBefore)
			if !workloadCertExpiring(left, life) {
				continue
			}
			expiring++
			sev, when := SeverityWarning, fmt.Sprintf("expires %s (in %s, %.0f%% of its %s lifetime left)", a.cert.NotAfter.UTC().Format(time.RFC3339), roundDuration(left), 100*float64(left)/float64(max(life, 1)), roundDuration(life))
			if left <= 0 {
				expired++
				sev, when = SeverityError, fmt.Sprintf("expired %s", a.cert.NotAfter.UTC().Format(time.RFC3339))
			}
			r.find(Finding{Code: CodeWorkloadCertExpiring, Severity: sev, Cluster: c.Name(), Subject: name,
				Message: fmt.Sprintf("the workload certificate of %s %s: a proxy renews at 80%% of its certificate's lifetime, so a healthy one never has less than %.0f%% left, and this one failed to renew; when it expires, mutual TLS to and from the pod fails", name, when, 100*WorkloadLifeLeftWarning),
				Fix:     fmt.Sprintf("the proxy's log says why (kubectl --context %s -n %s logs %s -c istio-proxy), and the control plane's CA log; restarting the pod gets a new certificate", ctxName(c), pod.Namespace, pod.Name)})
		}
		detail := fmt.Sprintf("%d proxies checked", len(running))
		if total > len(running) {
			detail = fmt.Sprintf("%d of %d proxies checked (capped at %d)", len(running), total, r.opts.CertCap)
		}
		if !earliest.IsZero() {
			detail += fmt.Sprintf(", earliest expiry in %s", earliest.Sub(now).Round(time.Minute))
		}
		if len(unreadable) > 0 {
			detail += fmt.Sprintf(", %d not readable (%s)", len(unreadable), unreadable[0])
		}
		status := StatusOK
		switch {
		case expired > 0:
			status = StatusError
		case expiring > 0:
			status = StatusWarning
		}
		r.row(CheckWorkloadCert, c, status, "%s", detail)
	}
}

// proxyReady: the pod's istio-proxy container is ready.
func proxyReady(p *corev1.Pod) bool {
	for _, s := range p.Status.ContainerStatuses {
		if s.Name == inject.ProxyName {
			return s.Ready
		}
	}
	return false
}

// workloadCertExpiring: less than WorkloadLifeLeftWarning of the
// certificate's lifetime is left (or none: expired).
func workloadCertExpiring(left, life time.Duration) bool {
	return left <= 0 || float64(left) < WorkloadLifeLeftWarning*float64(life)
}

// roundDuration rounds to the minute, or the second under 10 minutes.
func roundDuration(d time.Duration) time.Duration {
	if d < 10*time.Minute && d > -10*time.Minute {
		return d.Round(time.Second)
	}
	return d.Round(time.Minute)
}

func days(d time.Duration) string {
	if d < 48*time.Hour {
		return d.Round(time.Hour).String()
	}
	return fmt.Sprintf("%d days", int(d.Hours()/24))
}
