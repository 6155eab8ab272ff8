package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/isthmus-mesh/isthmus/internal/dashboard"
	"github.com/isthmus-mesh/isthmus/internal/inspect"
)

// dashboardPath is where the control plane serves the page on its
// monitoring port (internal/dashboard).
const dashboardPath = "/dashboard/"

func newDashboardCmd() *cobra.Command {
	var kubeconfig, kubeContext, istioNS, address string
	var port int
	cmd := &cobra.Command{
		Use:   "dashboard",
		Short: "Serve the mesh's live topology page on a local port, from every control plane replica",
		Long: `Serve the live topology page of the mesh on a local port, print its address
and serve until interrupted (Ctrl-C). Every second the page's data is read
from every running control plane pod (label app=istiod in the istio
namespace) on its monitoring port 15014, through the API server as
istioctl dashboard controlz reaches it, and merged: each proxy reports to
the replica it is connected to. A single replica serves the same page
itself at :15014/dashboard/.

The page shows the mesh as the control plane sees it:
  - every cluster it watches, grouped by network, primary or remote, with its
    state: synced, syncing, timeout (served with what was read so far), error
    (with why) or stale (its API server stopped answering, since when; the
    worst any replica reports);
  - each cluster's east-west gateways, their addresses and whether they are
    ready;
  - the workloads with sidecars of each cluster and, drawn between them, the
    requests per second and the share of errors (5xx and failed requests)
    from each workload to each other, green under 1%, amber under 10%, red
    above;
  - how long a change takes to reach the proxies (p50 and p99, from a change
    to each proxy acknowledging it).
The rates come from the sidecars' Istio metrics (istio_requests_total),
which each proxy pushes to its control plane every 5 seconds over Envoy's
metrics service; a rate is of the last two pushes.

When no control plane pod answers, the page keeps its last picture under a
banner saying so. Run it against the primary cluster.`,
		Example: `  isthmus dashboard --context cluster-eks
  isthmus dashboard --context cluster-eks -p 8080`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if port < 0 || port > 65535 {
				return fmt.Errorf("--port %d: want 0 (any free port) to 65535", port)
			}
			rc, err := restConfig(kubeconfig, kubeContext)
			if err != nil {
				return err
			}
			c, err := inspect.NewCluster(rc, istioNS)
			if err != nil {
				return err
			}
			return serveDashboard(cmd, c, istioNS, address, port)
		},
	}
	f := cmd.Flags()
	f.StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig (default $KUBECONFIG, then ~/.kube/config)")
	f.StringVar(&kubeContext, "context", "", "kubeconfig context of the primary cluster")
	f.StringVarP(&istioNS, "istioNamespace", "i", "istio-system", "namespace of the control plane")
	f.StringVar(&address, "address", "localhost", "local address to listen on (localhost, an IP, 0.0.0.0 for every interface)")
	f.IntVarP(&port, "port", "p", 0, "local port to listen on (0: any free port)")
	return cmd
}

// serveDashboard serves the page on address:port until the command's
// context ends, its data merged from every control plane pod.
func serveDashboard(cmd *cobra.Command, c *inspect.Cluster, istioNS, address string, port int) error {
	ctx := cmd.Context()
	l, err := net.Listen("tcp", net.JoinHostPort(address, strconv.Itoa(port)))
	if err != nil {
		return fmt.Errorf("listen on %s port %d: %w", address, port, err)
	}
	source := dashboard.SourceFunc(func(ctx context.Context) (*dashboard.Mesh, error) {
		return replicasMesh(ctx, c, istioNS)
	})
	mux := http.NewServeMux()
	page := dashboard.Handler(source)
	mux.Handle("/dashboard", page)
	mux.Handle("/dashboard/", page)
	mux.Handle("/{$}", http.RedirectHandler(dashboardPath, http.StatusFound))
	srv := &http.Server{Handler: localOnly(address, mux), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	fmt.Fprintln(cmd.OutOrStdout(), dashboardURL(address, l.Addr().(*net.TCPAddr).Port))
	fmt.Fprintf(cmd.ErrOrStderr(), "serving the mesh of the control plane in %s (Ctrl-C to stop)\n", istioNS)
	if err := srv.Serve(l); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// replicasMesh asks every running control plane pod for its view and
// merges them; a pod that does not answer is left out unless none does.
func replicasMesh(ctx context.Context, c *inspect.Cluster, istioNS string) (*dashboard.Mesh, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	pods, err := c.ControlPlanes(ctx, istioNS)
	if err != nil {
		return nil, err
	}
	views := make([]*dashboard.Mesh, len(pods))
	errs := make([]error, len(pods))
	var wg sync.WaitGroup
	for i := range pods {
		wg.Go(func() {
			b, err := c.Get(ctx, &pods[i], inspect.MonitoringPort, dashboardPath+"api/mesh")
			if err == nil {
				var m dashboard.Mesh
				if err = json.Unmarshal(b, &m); err == nil {
					views[i] = &m
				}
			}
			errs[i] = err
		})
	}
	wg.Wait()
	for _, v := range views {
		if v != nil {
			return dashboard.Merge(views), nil
		}
	}
	return nil, errors.Join(errs...)
}

// localOnly refuses requests whose Host is not the address served: the
// page reads the mesh with the user's credentials, and a web page the user
// visits could otherwise reach it through a DNS name rebound to 127.0.0.1.
// Served on every interface (0.0.0.0, ::), any Host is the user's choice.
func localOnly(address string, next http.Handler) http.Handler {
	if ip := net.ParseIP(address); ip != nil && ip.IsUnspecified() {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host := r.Host
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		}
		ip := net.ParseIP(host)
		if host != "localhost" && host != address && (ip == nil || !ip.IsLoopback() && !ip.Equal(net.ParseIP(address))) {
			http.Error(w, "the dashboard answers only requests for "+address+" or localhost (Host: "+r.Host+")", http.StatusForbidden)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// dashboardURL is the page's address on the local end of the forward.
func dashboardURL(address string, port int) string {
	host := address
	if ip := net.ParseIP(address); address == "" || ip != nil && ip.IsUnspecified() {
		host = "localhost"
	}
	return "http://" + net.JoinHostPort(host, strconv.Itoa(port)) + dashboardPath
}
