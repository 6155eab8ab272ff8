// Package inspect is the operator's view of a running mesh: it reads the
// admin interface of proxies (config_dump, clusters) and the control
// plane's sync status through Kubernetes port-forwarding, as istioctl
// does, and prints them as istioctl's tables.
package inspect

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/transport/spdy"
)

// Cluster is one Kubernetes cluster to inspect.
type Cluster struct {
	Config *rest.Config
	Client kubernetes.Interface
	// Namespace is the default for pod names without one.
	Namespace string
}

// NewCluster connects to the cluster of a REST config.
func NewCluster(rc *rest.Config, namespace string) (*Cluster, error) {
	c, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, err
	}
	if namespace == "" {
		namespace = "default"
	}
	return &Cluster{Config: rc, Client: c, Namespace: namespace}, nil
}

// Pod resolves istioctl's forms: POD, POD.NAMESPACE, and deployment/NAME
// (or deploy/NAME) for a running pod of a Deployment.
func (c *Cluster) Pod(ctx context.Context, ref string) (*corev1.Pod, error) {
	ns := c.Namespace
	if kind, name, ok := strings.Cut(ref, "/"); ok {
		if kind != "deployment" && kind != "deploy" {
			return nil, fmt.Errorf("%q: want POD, POD.NAMESPACE or deployment/NAME", ref)
		}
		if n, nsPart, ok := strings.Cut(name, "."); ok {
			name, ns = n, nsPart
		}
		d, err := c.Client.AppsV1().Deployments(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return nil, err
		}
		sel, err := metav1.LabelSelectorAsSelector(d.Spec.Selector)
		if err != nil {
			return nil, err
		}
		return c.runningPod(ctx, ns, sel, "deployment "+ns+"/"+name)
	}
	name := ref
	if n, nsPart, ok := strings.Cut(ref, "."); ok {
		name, ns = n, nsPart
	}
	return c.Client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
}

func (c *Cluster) runningPod(ctx context.Context, ns string, sel labels.Selector, what string) (*corev1.Pod, error) {
	pods, err := c.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: sel.String()})
	if err != nil {
		return nil, err
	}
	for i := range pods.Items {
		if p := &pods.Items[i]; p.Status.Phase == corev1.PodRunning && p.DeletionTimestamp == nil {
			return p, nil
		}
	}
	return nil, fmt.Errorf("no running pod of %s", what)
}

// Get fetches path from a port of a pod through a port-forward, as
// istioctl reaches a proxy's localhost-only admin port.
func (c *Cluster) Get(ctx context.Context, pod *corev1.Pod, port int, path string) ([]byte, error) {
	return c.Do(ctx, pod, port, http.MethodGet, path)
}

// Do sends a request without a body to a port of a pod through a
// port-forward and returns the answer of a 200.
func (c *Cluster) Do(ctx context.Context, pod *corev1.Pod, port int, method, path string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req := c.Client.CoreV1().RESTClient().Post().Resource("pods").Namespace(pod.Namespace).Name(pod.Name).SubResource("portforward")
	transport, upgrader, err := spdy.RoundTripperFor(c.Config)
	if err != nil {
		return nil, err
	}
	dialer := spdy.NewDialer(upgrader, &http.Client{Transport: transport}, http.MethodPost, req.URL())
	stop, ready := make(chan struct{}), make(chan struct{})
	defer close(stop)
	var errOut strings.Builder
	fw, err := portforward.NewOnAddresses(dialer, []string{"127.0.0.1"}, []string{fmt.Sprintf("0:%d", port)}, stop, ready, io.Discard, &errOut)
	if err != nil {
		return nil, err
	}
	failed := make(chan error, 1)
	go func() { failed <- fw.ForwardPorts() }()
	select {
	case <-ready:
	case err := <-failed:
		return nil, fmt.Errorf("port-forward to %s/%s:%d: %v %s", pod.Namespace, pod.Name, port, err, errOut.String())
	case <-ctx.Done():
		return nil, fmt.Errorf("port-forward to %s/%s:%d: %w", pod.Namespace, pod.Name, port, ctx.Err())
	}
	ports, err := fw.GetPorts()
	if err != nil || len(ports) == 0 {
		return nil, errors.Join(errors.New("port-forward opened no local port"), err)
	}
	hreq, err := http.NewRequestWithContext(ctx, method, fmt.Sprintf("http://127.0.0.1:%d%s", ports[0].Local, path), nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(hreq)
	if err != nil {
		return nil, fmt.Errorf("%s/%s:%d%s: %w", pod.Namespace, pod.Name, port, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s/%s:%d%s: %s: %s", pod.Namespace, pod.Name, port, path, resp.Status, strings.TrimSpace(string(b)))
	}
	return b, nil
}
