package install

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"k8s.io/utils/ptr"
)

// FieldManager owns the fields the installer sets (server-side apply).
const FieldManager = "isthmus-installer"

// Cluster applies, awaits and deletes rendered objects in one cluster.
type Cluster struct {
	dyn    dynamic.Interface
	mapper *restmapper.DeferredDiscoveryRESTMapper
	// Out gets one progress line per step.
	Out io.Writer
	// Timeout bounds the wait for each component to be ready.
	Timeout time.Duration
}

// NewCluster connects to the cluster of a REST config.
func NewCluster(rc *rest.Config, out io.Writer, timeout time.Duration) (*Cluster, error) {
	dyn, err := dynamic.NewForConfig(rc)
	if err != nil {
		return nil, err
	}
	dc, err := discovery.NewDiscoveryClientForConfig(rc)
	if err != nil {
		return nil, err
	}
	return &Cluster{dyn: dyn, mapper: restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc)), Out: out, Timeout: timeout}, nil
}

var componentTitle = map[string]string{
	ComponentBase: "Istio core", ComponentPilot: "Istiod", ComponentRemote: "Istiod remote", ComponentGateways: "Ingress gateways", ComponentEgressGateways: "Egress gateways",
}

// Install applies parts in order; after each it waits until the
// component's CRDs are established and its Deployments available.
func (c *Cluster) Install(ctx context.Context, parts []Part) error {
	for _, p := range parts {
		title := componentTitle[p.Component]
		for _, o := range p.Objects {
			if err := c.apply(ctx, o); err != nil {
				return fmt.Errorf("%s: %w", title, err)
			}
		}
		for _, o := range p.Absent {
			ri, err := c.resource(o)
			if err != nil {
				return fmt.Errorf("%s: %w", title, err)
			}
			if err := ri.Delete(ctx, o.GetName(), metav1.DeleteOptions{}); err == nil {
				fmt.Fprintf(c.Out, "  %s removed: this file does not make it\n", describeObj(o))
			} else if !apierrors.IsNotFound(err) {
				return fmt.Errorf("%s: delete %s: %w", title, describeObj(o), err)
			}
		}
		if err := c.wait(ctx, p); err != nil {
			fmt.Fprintf(c.Out, "✘ %s: %v\n", title, err)
			return fmt.Errorf("%s: %w", title, err)
		}
		fmt.Fprintf(c.Out, "✔ %s installed\n", title)
	}
	fmt.Fprintln(c.Out, "✔ Installation complete")
	return nil
}

func (c *Cluster) resource(o *unstructured.Unstructured) (dynamic.ResourceInterface, error) {
	gvk := o.GroupVersionKind()
	m, err := c.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if meta.IsNoMatchError(err) {
		c.mapper.Reset()
		m, err = c.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	}
	if err != nil {
		return nil, fmt.Errorf("%s %s: the cluster does not serve this kind: %w", gvk.Kind, o.GetName(), err)
	}
	if m.Scope.Name() == meta.RESTScopeNameNamespace {
		return c.dyn.Resource(m.Resource).Namespace(o.GetNamespace()), nil
	}
	return c.dyn.Resource(m.Resource), nil
}

func describeObj(o *unstructured.Unstructured) string {
	if ns := o.GetNamespace(); ns != "" {
		return o.GetKind() + " " + ns + "/" + o.GetName()
	}
	return o.GetKind() + " " + o.GetName()
}

// apply is a server-side apply; a Namespace that exists is left as the
// user made it (the remote's istio-system carries their network label).
func (c *Cluster) apply(ctx context.Context, o *unstructured.Unstructured) error {
	ri, err := c.resource(o)
	if err != nil {
		return err
	}
	if o.GetKind() == "Namespace" {
		if _, err := ri.Get(ctx, o.GetName(), metav1.GetOptions{}); err == nil {
			return nil
		}
	}
	if _, err := ri.Apply(ctx, o.GetName(), o, metav1.ApplyOptions{FieldManager: FieldManager, Force: true}); err != nil {
		return fmt.Errorf("apply %s: %w", describeObj(o), err)
	}
	return nil
}

// wait polls until every CRD of p is established and every Deployment
// available, printing what it still waits for every few seconds.
func (c *Cluster) wait(ctx context.Context, p Part) error {
	ctx, cancel := context.WithTimeout(ctx, c.Timeout)
	defer cancel()
	crds := false
	lastSaid := time.Now()
	for {
		var pending []string
		for _, o := range p.Objects {
			switch o.GetKind() {
			case "CustomResourceDefinition", "Deployment":
			default:
				continue
			}
			ri, err := c.resource(o)
			if err != nil {
				return err
			}
			cur, err := ri.Get(ctx, o.GetName(), metav1.GetOptions{})
			if err != nil {
				pending = append(pending, describeObj(o)+" ("+err.Error()+")")
				continue
			}
			if o.GetKind() == "CustomResourceDefinition" {
				crds = true
				if !condition(cur, "Established") {
					pending = append(pending, describeObj(o))
				}
			} else if why := deploymentPending(cur); why != "" {
				pending = append(pending, describeObj(o)+" ("+why+")")
			}
		}
		if len(pending) == 0 {
			if crds {
				c.mapper.Reset()
			}
			return nil
		}
		if time.Since(lastSaid) > 5*time.Second {
			fmt.Fprintf(c.Out, "  waiting for %s\n", strings.Join(pending, ", "))
			lastSaid = time.Now()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("not ready after %s: %s", c.Timeout, strings.Join(pending, ", "))
		case <-time.After(time.Second):
		}
	}
}

func condition(u *unstructured.Unstructured, typ string) bool {
	conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	for _, x := range conds {
		m, _ := x.(map[string]any)
		if m["type"] == typ && m["status"] == "True" {
			return true
		}
	}
	return false
}

// deploymentPending says why a Deployment is not rolled out, or "".
func deploymentPending(u *unstructured.Unstructured) string {
	gen := u.GetGeneration()
	observed, _, _ := unstructured.NestedInt64(u.Object, "status", "observedGeneration")
	want, found, _ := unstructured.NestedInt64(u.Object, "spec", "replicas")
	if !found {
		want = 1
	}
	updated, _, _ := unstructured.NestedInt64(u.Object, "status", "updatedReplicas")
	available, _, _ := unstructured.NestedInt64(u.Object, "status", "availableReplicas")
	total, _, _ := unstructured.NestedInt64(u.Object, "status", "replicas")
	switch {
	case observed < gen:
		return "rollout not started"
	case updated < want:
		return fmt.Sprintf("%d of %d updated", updated, want)
	case total > updated:
		return fmt.Sprintf("%d old replicas terminating", total-updated)
	case available < want:
		return fmt.Sprintf("%d of %d available", available, want)
	}
	return ""
}

// Delete removes rendered objects in reverse order. Namespaces always
// stay; CRDs (and with them every Istio object) only when withCRDs.
func (c *Cluster) Delete(ctx context.Context, parts []Part, withCRDs bool) error {
	var errs []error
	for _, p := range slices.Backward(parts) {
		n := 0
		for _, o := range slices.Backward(p.Objects) {
			kind := o.GetKind()
			if kind == "Namespace" || (kind == "CustomResourceDefinition" && !withCRDs) {
				continue
			}
			ri, err := c.resource(o)
			if err != nil {
				if meta.IsNoMatchError(errors.Unwrap(err)) {
					continue
				}
				errs = append(errs, err)
				continue
			}
			err = ri.Delete(ctx, o.GetName(), metav1.DeleteOptions{PropagationPolicy: ptr.To(metav1.DeletePropagationBackground)})
			switch {
			case apierrors.IsNotFound(err):
			case err != nil:
				errs = append(errs, fmt.Errorf("delete %s: %w", describeObj(o), err))
			default:
				n++
			}
		}
		fmt.Fprintf(c.Out, "✔ %s removed (%d objects)\n", componentTitle[p.Component], n)
	}
	return errors.Join(errs...)
}

// Purge removes every object the installer labelled, whichever file made it.
func (c *Cluster) Purge(ctx context.Context, withCRDs bool) error {
	kinds := []schema.GroupVersionResource{
		// Webhooks first: a validator left behind with failurePolicy Fail
		// would refuse every Istio object once its control plane is gone.
		{Group: "admissionregistration.k8s.io", Version: "v1", Resource: "validatingwebhookconfigurations"},
		{Group: "admissionregistration.k8s.io", Version: "v1", Resource: "mutatingwebhookconfigurations"},
		{Group: "autoscaling", Version: "v2", Resource: "horizontalpodautoscalers"},
		{Group: "policy", Version: "v1", Resource: "poddisruptionbudgets"},
		{Group: "apps", Version: "v1", Resource: "deployments"},
		{Version: "v1", Resource: "services"},
		{Group: "discovery.k8s.io", Version: "v1", Resource: "endpointslices"},
		{Version: "v1", Resource: "configmaps"},
		{Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "rolebindings"},
		{Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "roles"},
		{Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "clusterrolebindings"},
		{Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "clusterroles"},
		{Version: "v1", Resource: "serviceaccounts"},
	}
	if withCRDs {
		kinds = append(kinds, schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"})
	}
	var errs []error
	n := 0
	for _, gvr := range kinds {
		list, err := c.dyn.Resource(gvr).List(ctx, metav1.ListOptions{LabelSelector: LabelComponent})
		if err != nil {
			errs = append(errs, fmt.Errorf("list %s: %w", gvr.Resource, err))
			continue
		}
		for _, o := range list.Items {
			var ri dynamic.ResourceInterface = c.dyn.Resource(gvr)
			if o.GetNamespace() != "" {
				ri = c.dyn.Resource(gvr).Namespace(o.GetNamespace())
			}
			err := ri.Delete(ctx, o.GetName(), metav1.DeleteOptions{PropagationPolicy: ptr.To(metav1.DeletePropagationBackground)})
			if err != nil && !apierrors.IsNotFound(err) {
				errs = append(errs, fmt.Errorf("delete %s %s: %w", gvr.Resource, o.GetName(), err))
			} else if err == nil {
				n++
			}
		}
	}
	fmt.Fprintf(c.Out, "✔ Purged %d objects\n", n)
	return errors.Join(errs...)
}
