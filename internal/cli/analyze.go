package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strings"

	"github.com/spf13/cobra"
	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	istioclient "istio.io/client-go/pkg/clientset/versioned"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/yaml"

	"github.com/isthmus-mesh/isthmus/internal/analyze"
	"github.com/isthmus-mesh/isthmus/internal/discovery/remotesecret"
	"github.com/isthmus-mesh/isthmus/internal/istiocrd"
	"github.com/isthmus-mesh/isthmus/internal/validation"
)

// exitAnalyzerFoundIssues is istioctl analyze's exit code when it finds errors.
const exitAnalyzerFoundIssues = 79

func newAnalyzeCmd() *cobra.Command {
	var kubeconfig, kubeContext, istioNS string
	var files []string
	var useKube bool
	cmd := &cobra.Command{
		Use:   "analyze [-f FILE]... [--context CTX]",
		Short: "Find Istio configuration that refers to nothing, across every cluster of the mesh",
		Long: `Check the mesh's Istio configuration, as istioctl analyze does, against the
services and pods of every cluster: the primary given by --context and each
remote cluster named by a remote secret in the control plane's namespace
(read with the secret's own credentials, as the control plane reads them).

Reported: a VirtualService whose destination host is a Service in no cluster,
whose gateway does not exist or whose subset no DestinationRule defines (Error
IST0101); a DestinationRule for a host that exists nowhere (Warning IST0101)
or with a subset no pod of any cluster matches (Warning IST0127); a Gateway
whose selector matches no pod in any cluster (Error IST0101); an
AuthorizationPolicy or PeerAuthentication selecting no workload (Warning
IST0127). Every Istio object in the cluster, and files given with -f, are
validated as the control plane's admission webhook validates them: an Error
IST0106 would be refused, a Warning ISM0002 names a kind or field isthmus
does not act on and what happens instead, a Warning ISM0001 an authorization
rule part it cannot enforce. Files are then analyzed with (and over) what the
cluster holds; --use-kube=false analyzes the files alone. Exit code 79 when
an error is found.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			var cfg analyze.Config
			var msgs []analyze.Message
			opts := analyze.Options{RootNamespace: istioNS}
			scope := "the files"
			if useKube {
				rc, err := restConfig(kubeconfig, kubeContext)
				if err != nil {
					return err
				}
				kc, err := kubernetes.NewForConfig(rc)
				if err != nil {
					return err
				}
				ic, err := istioclient.NewForConfig(rc)
				if err != nil {
					return err
				}
				if cfg, err = istioConfig(ctx, ic); err != nil {
					return err
				}
				dyn, err := dynamic.NewForConfig(rc)
				if err != nil {
					return err
				}
				found, err := clusterObjects(ctx, dyn, files)
				if err != nil {
					return err
				}
				msgs = append(msgs, found...)
				name := kubeContext
				if name == "" {
					name = "the current context"
				}
				primary, err := clusterState(ctx, name, kc)
				if err != nil {
					return err
				}
				opts.Clusters = append(opts.Clusters, primary)
				remotes, warnings := remoteClusters(ctx, kc, istioNS)
				for _, w := range warnings {
					fmt.Fprintf(cmd.ErrOrStderr(), "! %s\n", w)
				}
				opts.Clusters = append(opts.Clusters, remotes...)
				var names []string
				for _, c := range opts.Clusters {
					names = append(names, c.Name)
				}
				scope = "clusters " + strings.Join(names, ", ")
			}
			for _, f := range files {
				found, err := addFile(&cfg, f)
				if err != nil {
					return err
				}
				msgs = append(msgs, found...)
			}
			msgs = append(msgs, analyze.Run(cfg, opts)...)
			errors := 0
			for _, m := range msgs {
				fmt.Fprintln(cmd.OutOrStdout(), m.String())
				if m.Level == "Error" {
					errors++
				}
			}
			if len(msgs) == 0 {
				fmt.Fprintf(cmd.OutOrStdout(), "✔ No validation issues found when analyzing %s.\n", scope)
			}
			if errors > 0 {
				return exitCodeError{code: exitAnalyzerFoundIssues}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig (default $KUBECONFIG, then ~/.kube/config)")
	f.StringVar(&kubeContext, "context", "", "kubeconfig context of the primary (config) cluster")
	f.StringVarP(&istioNS, "istioNamespace", "i", "istio-system", "the control plane's namespace (remote secrets, mesh-wide policy)")
	f.StringArrayVarP(&files, "filename", "f", nil, "Istio configuration files to analyze (with the cluster's unless --use-kube=false)")
	f.BoolVar(&useKube, "use-kube", true, "read configuration, services and pods from the clusters")
	return cmd
}

// clusterObjects validates every object of Istio's kinds in the cluster as
// the admission webhook does (objects applied before it ran, or while it
// was down, or of kinds it did not cover, were never warned about), except
// those the files replace.
func clusterObjects(ctx context.Context, dyn dynamic.Interface, files []string) ([]analyze.Message, error) {
	kinds, err := istiocrd.Kinds()
	if err != nil {
		return nil, err
	}
	replaced := map[string]bool{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		for _, doc := range bytes.Split(b, []byte("\n---")) {
			var o struct {
				Kind     string
				Metadata struct{ Name, Namespace string }
			}
			if yaml.Unmarshal(doc, &o) == nil && o.Kind != "" {
				if o.Metadata.Namespace == "" {
					o.Metadata.Namespace = "default"
				}
				replaced[o.Kind+" "+o.Metadata.Namespace+"/"+o.Metadata.Name] = true
			}
		}
	}
	var out []analyze.Message
	for _, k := range kinds {
		list, err := dyn.Resource(k.Resource).List(ctx, metav1.ListOptions{})
		if apierrors.IsNotFound(err) {
			continue // the CRD is not installed: nothing of this kind
		}
		if err != nil {
			return nil, fmt.Errorf("list %s: %w", k.Resource.GroupResource(), err)
		}
		for _, o := range list.Items {
			if replaced[o.GetKind()+" "+o.GetNamespace()+"/"+o.GetName()] {
				continue
			}
			j, err := o.MarshalJSON()
			if err != nil {
				return nil, err
			}
			res, ok, err := validation.Object(j)
			if err != nil || !ok {
				continue
			}
			out = append(out, analyze.Validated(res)...)
		}
	}
	return out, nil
}

// istioConfig lists the configuration the control plane reads.
func istioConfig(ctx context.Context, ic istioclient.Interface) (analyze.Config, error) {
	var cfg analyze.Config
	all := metav1.ListOptions{}
	vs, err := ic.NetworkingV1().VirtualServices("").List(ctx, all)
	if err != nil {
		return cfg, fmt.Errorf("list VirtualServices (are Istio's CRDs installed?): %w", err)
	}
	cfg.VirtualServices = vs.Items
	drs, err := ic.NetworkingV1().DestinationRules("").List(ctx, all)
	if err != nil {
		return cfg, err
	}
	cfg.DestinationRules = drs.Items
	gws, err := ic.NetworkingV1().Gateways("").List(ctx, all)
	if err != nil {
		return cfg, err
	}
	cfg.Gateways = gws.Items
	pas, err := ic.SecurityV1().PeerAuthentications("").List(ctx, all)
	if err != nil {
		return cfg, err
	}
	cfg.PeerAuthentications = pas.Items
	aps, err := ic.SecurityV1().AuthorizationPolicies("").List(ctx, all)
	if err != nil {
		return cfg, err
	}
	cfg.AuthorizationPolicies = aps.Items
	return cfg, nil
}

func clusterState(ctx context.Context, name string, kc kubernetes.Interface) (analyze.Cluster, error) {
	c := analyze.Cluster{Name: name}
	svcs, err := kc.CoreV1().Services("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return c, fmt.Errorf("%s: list services: %w", name, err)
	}
	pods, err := kc.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return c, fmt.Errorf("%s: list pods: %w", name, err)
	}
	c.Services, c.Pods = svcs.Items, pods.Items
	return c, nil
}

// remoteClusters opens the clusters of the remote secrets; one that cannot
// be read is a warning, not a failure.
func remoteClusters(ctx context.Context, kc kubernetes.Interface, ns string) ([]analyze.Cluster, []string) {
	secrets, err := kc.CoreV1().Secrets(ns).List(ctx, metav1.ListOptions{LabelSelector: remotesecret.LabelMultiCluster + "=true"})
	if err != nil {
		return nil, []string{fmt.Sprintf("cannot list remote secrets in %s: %v; analyzing the primary alone", ns, err)}
	}
	var out []analyze.Cluster
	var warnings []string
	for _, s := range secrets.Items {
		ids := make([]string, 0, len(s.Data))
		for id := range s.Data {
			ids = append(ids, id)
		}
		sort.Strings(ids)
		for _, id := range ids {
			rc, err := remotesecret.RESTConfig(s.Data[id])
			if err != nil {
				warnings = append(warnings, fmt.Sprintf("remote secret %s/%s cluster %s: %v; skipped", ns, s.Name, id, err))
				continue
			}
			c, err := kubernetes.NewForConfig(rc)
			if err == nil {
				var st analyze.Cluster
				if st, err = clusterState(ctx, id, c); err == nil {
					out = append(out, st)
					continue
				}
			}
			warnings = append(warnings, fmt.Sprintf("remote cluster %s (secret %s/%s): %v; skipped", id, ns, s.Name, err))
		}
	}
	return out, warnings
}

// addFile validates the Istio objects of a YAML file and adds the valid
// ones, replacing the cluster's objects of the same kind, namespace and name.
func addFile(cfg *analyze.Config, path string) ([]analyze.Message, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var msgs []analyze.Message
	for i, doc := range bytes.Split(b, []byte("\n---")) {
		j, err := yaml.YAMLToJSON(doc)
		if err != nil {
			return nil, fmt.Errorf("%s document %d: %w", path, i+1, err)
		}
		if len(bytes.TrimSpace(j)) == 0 || string(j) == "null" {
			continue
		}
		res, ok, err := validation.Object(j)
		if err != nil {
			return nil, fmt.Errorf("%s document %d: %w", path, i+1, err)
		}
		if !ok {
			continue
		}
		if res.Namespace == "" {
			res.Namespace = "default"
		}
		name := res.Name + "." + res.Namespace
		msgs = append(msgs, analyze.Validated(res)...)
		if len(res.Errors) > 0 {
			continue
		}
		decode := func(into interface{ SetNamespace(string) }) error {
			if err := json.Unmarshal(j, into); err != nil {
				return fmt.Errorf("%s document %d (%s %s): %w", path, i+1, res.Kind, name, err)
			}
			into.SetNamespace(res.Namespace)
			return nil
		}
		switch res.Kind {
		case "VirtualService":
			o := &networkingv1.VirtualService{}
			if err := decode(o); err != nil {
				return nil, err
			}
			cfg.VirtualServices = replace(cfg.VirtualServices, o)
		case "DestinationRule":
			o := &networkingv1.DestinationRule{}
			if err := decode(o); err != nil {
				return nil, err
			}
			cfg.DestinationRules = replace(cfg.DestinationRules, o)
		case "Gateway":
			o := &networkingv1.Gateway{}
			if err := decode(o); err != nil {
				return nil, err
			}
			cfg.Gateways = replace(cfg.Gateways, o)
		case "PeerAuthentication":
			o := &securityv1.PeerAuthentication{}
			if err := decode(o); err != nil {
				return nil, err
			}
			cfg.PeerAuthentications = replace(cfg.PeerAuthentications, o)
		case "AuthorizationPolicy":
			o := &securityv1.AuthorizationPolicy{}
			if err := decode(o); err != nil {
				return nil, err
			}
			cfg.AuthorizationPolicies = replace(cfg.AuthorizationPolicies, o)
		}
	}
	return msgs, nil
}

type namedObject interface {
	GetName() string
	GetNamespace() string
}

func replace[T namedObject](list []T, o T) []T {
	for i, x := range list {
		if x.GetName() == o.GetName() && x.GetNamespace() == o.GetNamespace() {
			list[i] = o
			return list
		}
	}
	return append(list, o)
}
