package check

import (
	"context"
	"fmt"
	"net/url"
	"sort"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/isthmus-mesh/isthmus/internal/discovery/remotesecret"
)

// RemoteSecret is one cluster of a remote secret: its ID (the data key)
// and the API server its kubeconfig names.
type RemoteSecret struct {
	// Secret is namespace/name.
	Secret string
	ID     string
	Server string
}

// RemoteSecrets lists the clusters of the remote secrets in the control
// plane's namespace (Secrets labelled istio/multiCluster=true, each data key
// a cluster ID, its value a kubeconfig), sorted by ID.
func RemoteSecrets(ctx context.Context, client kubernetes.Interface, namespace string) ([]RemoteSecret, error) {
	list, err := client.CoreV1().Secrets(namespace).List(ctx, metav1.ListOptions{LabelSelector: remotesecret.LabelMultiCluster + "=true"})
	if err != nil {
		return nil, fmt.Errorf("list remote secrets in %s: %w", namespace, err)
	}
	var out []RemoteSecret
	for _, s := range list.Items {
		for id, kc := range s.Data {
			out = append(out, RemoteSecret{Secret: s.Namespace + "/" + s.Name, ID: id, Server: kubeconfigServer(kc)})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// kubeconfigServer is the server of a kubeconfig's current (or only)
// context, "" when it names none.
func kubeconfigServer(b []byte) string {
	cfg, err := clientcmd.Load(b)
	if err != nil {
		return ""
	}
	name := cfg.CurrentContext
	if name == "" && len(cfg.Contexts) == 1 {
		for n := range cfg.Contexts {
			name = n
		}
	}
	kctx := cfg.Contexts[name]
	if kctx == nil {
		return ""
	}
	if cl := cfg.Clusters[kctx.Cluster]; cl != nil {
		return cl.Server
	}
	return ""
}

// KubeContext is a kubeconfig context and its cluster's server.
type KubeContext struct {
	Name, Server string
}

// Match is a remote cluster and the context that reaches it.
type Match struct {
	// RemoteSecret is zero-Secret for a --remote-contexts context that no
	// secret names.
	RemoteSecret
	// Context is "" when no context reaches the secret's server.
	Context string
	// How: "server" (same API server URL), "name" (the context is named
	// after the cluster ID) or "--remote-contexts".
	How string
}

// MatchContexts pairs each remote secret with the kubeconfig context
// whose server is the secret's (a context named after the cluster ID when
// none is): among explicit (--remote-contexts) when given, else among
// every context but the primary's (and those of the primary's server).
// Explicit contexts no secret matches come back with an empty Secret. An
// explicit context that is not in the kubeconfig is an error.
func MatchContexts(secrets []RemoteSecret, contexts []KubeContext, primary string, explicit []string) ([]Match, error) {
	byName := map[string]KubeContext{}
	for _, c := range contexts {
		byName[c.Name] = c
	}
	var candidates []KubeContext
	if len(explicit) > 0 {
		for _, n := range explicit {
			c, ok := byName[n]
			if !ok {
				return nil, fmt.Errorf("--remote-contexts: no context %q in the kubeconfig", n)
			}
			candidates = append(candidates, c)
		}
	} else {
		primaryServer := NormalizeServer(byName[primary].Server)
		for _, c := range contexts {
			if c.Name != primary && (primaryServer == "" || NormalizeServer(c.Server) != primaryServer) {
				candidates = append(candidates, c)
			}
		}
		sort.Slice(candidates, func(i, j int) bool { return candidates[i].Name < candidates[j].Name })
	}
	used := map[string]bool{}
	var out []Match
	for _, s := range secrets {
		m := Match{RemoteSecret: s}
		want := NormalizeServer(s.Server)
		for _, c := range candidates {
			if used[c.Name] || want == "" || NormalizeServer(c.Server) != want {
				continue
			}
			// Several contexts of one server: the one named after the cluster.
			if m.Context == "" || c.Name == s.ID {
				m.Context, m.How = c.Name, "server"
			}
		}
		if m.Context == "" {
			for _, c := range candidates {
				if !used[c.Name] && c.Name == s.ID {
					m.Context, m.How = c.Name, "name"
				}
			}
		}
		if m.Context != "" {
			used[m.Context] = true
		}
		out = append(out, m)
	}
	for _, c := range candidates {
		if len(explicit) > 0 && !used[c.Name] {
			out = append(out, Match{RemoteSecret: RemoteSecret{Server: c.Server}, Context: c.Name, How: "--remote-contexts"})
		}
	}
	return out, nil
}

// NormalizeServer makes API server URLs comparable: lower-case scheme and
// host, the default port spelled out, no trailing slash.
func NormalizeServer(s string) string {
	s = strings.TrimSpace(s)
	if s == "" {
		return ""
	}
	u, err := url.Parse(s)
	if err != nil || u.Host == "" {
		return strings.TrimSuffix(strings.ToLower(s), "/")
	}
	host := strings.ToLower(u.Hostname())
	port := u.Port()
	scheme := strings.ToLower(u.Scheme)
	if port == "" {
		port = map[string]string{"https": "443", "http": "80"}[scheme]
	}
	if strings.Contains(host, ":") {
		host = "[" + host + "]"
	}
	return scheme + "://" + host + ":" + port + strings.TrimSuffix(u.Path, "/")
}
