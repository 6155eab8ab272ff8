// Package launch runs Istio's own pilot-discovery (istiod, built by
// test/istiod) out of cluster against the sandbox's API servers so that it
// writes nothing there: a read-only account in every cluster, the remotes'
// kubeconfigs from a directory rather than remote Secrets (which isthmus
// would read too), a CA plugged in from files, and the writers an
// environment variable can turn off turned off. The scale benchmark
// (bench/cpscale) and the walkthrough's differential test
// (test/e2e/walkthrough_istiod_test.go) both measure isthmus against it, so
// they launch it one way, here.
package launch

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// Binary returns pilot-discovery's path: test/istiod builds it once per
// machine and caches it outside any checkout. root is the isthmus module's
// directory ("" for the current one).
func Binary(ctx context.Context, root string) (string, error) {
	cmd := exec.CommandContext(ctx, "go", "run", "./test/istiod", "pilot-discovery")
	cmd.Dir = root
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("build pilot-discovery (make istiod): %w", err)
	}
	return strings.TrimSpace(string(out)), nil
}

// Cluster is one cluster istiod reads.
type Cluster struct {
	// ID is its cluster ID and its context's name in the admin kubeconfig.
	ID string
	// Client has admin rights, to create istiod's reader account.
	Client kubernetes.Interface
}

// Addrs are the addresses pilot-discovery listens on.
type Addrs struct {
	GRPC, HTTP, SecureGRPC, HTTPS, Monitoring string
}

// Istiod is one pilot-discovery run as the first cluster's control plane,
// with the others as its remotes.
type Istiod struct {
	Binary string
	// Dir holds what Prepare writes; it is also the working directory.
	Dir string
	// AdminKubeconfig gives each cluster's API server address and CA.
	AdminKubeconfig string
	// Clusters, the primary first.
	Clusters []Cluster
	// Name is the reader ServiceAccount's in each cluster's default
	// namespace, and istiod's POD_NAME.
	Name string
	// Role names the ClusterRole and its binding that let Name read.
	Role string
	// CAName is the plugged root's subject organization.
	CAName string
	// Mesh and MeshNetworks are the mesh configuration files' contents;
	// an empty MeshNetworks declares no networks.
	Mesh, MeshNetworks string
	Addrs              Addrs
}

// Prepare creates the reader account in every cluster and writes its
// kubeconfigs, the plugged CA and the mesh configuration under Dir.
func (o *Istiod) Prepare(ctx context.Context) error {
	if len(o.Clusters) == 0 {
		return fmt.Errorf("istiod: no clusters")
	}
	if err := os.MkdirAll(o.remotes(), 0o700); err != nil {
		return err
	}
	admin, err := clientcmd.LoadFromFile(o.AdminKubeconfig)
	if err != nil {
		return err
	}
	for i, c := range o.Clusters {
		if err := o.reader(ctx, admin, c, o.Kubeconfigs()[i]); err != nil {
			return fmt.Errorf("istiod's account in %s: %w", c.ID, err)
		}
	}
	if err := pluggedCA(o.caDir(), o.CAName); err != nil {
		return err
	}
	networks := o.MeshNetworks
	if networks == "" {
		networks = "networks: {}\n"
	}
	for name, s := range map[string]string{"mesh": o.Mesh, "meshNetworks": networks} {
		if err := os.WriteFile(filepath.Join(o.Dir, name), []byte(s), 0o600); err != nil {
			return err
		}
	}
	return nil
}

// Kubeconfigs are the reader's kubeconfigs, one per cluster in order: the
// primary's, then each remote's in the directory Istio reads remotes from
// (*.yaml files only, as it reads remote Secrets).
func (o *Istiod) Kubeconfigs() []string {
	paths := []string{filepath.Join(o.Dir, "kubeconfig")}
	for _, c := range o.Clusters[1:] {
		paths = append(paths, filepath.Join(o.remotes(), c.ID+".yaml"))
	}
	return paths
}

func (o *Istiod) remotes() string { return filepath.Join(o.Dir, "remotes") }
func (o *Istiod) caDir() string   { return filepath.Join(o.Dir, "cacerts") }

// Argv is the command line, the binary first.
func (o *Istiod) Argv() []string {
	return []string{o.Binary, "discovery",
		"--kubeconfig", o.Kubeconfigs()[0],
		"--meshConfig", filepath.Join(o.Dir, "mesh"), "--networksConfig", filepath.Join(o.Dir, "meshNetworks"),
		"--clusterID", o.Clusters[0].ID, "--domain", "cluster.local",
		"--grpcAddr", o.Addrs.GRPC, "--httpAddr", o.Addrs.HTTP,
		"--secureGRPCAddr", o.Addrs.SecureGRPC, "--httpsAddr", o.Addrs.HTTPS, "--monitoringAddr", o.Addrs.Monitoring,
		"--shutdownDuration", "1s"}
}

// Env is what it adds to the environment.
func (o *Istiod) Env() []string {
	return []string{
		"POD_NAMESPACE=istio-system", "POD_NAME=" + o.Name, "CLUSTER_ID=" + o.Clusters[0].ID,
		"ROOT_CA_DIR=" + o.caDir(),
		"PILOT_MULTICLUSTER_KUBECONFIG_PATH=" + o.remotes(),
		// What istiod would write where an environment variable turns it
		// off; the rest (root certificate ConfigMaps, leader election)
		// the reader's RBAC refuses.
		"INJECT_ENABLED=false", "INJECTION_WEBHOOK_CONFIG_NAME=", "VALIDATION_WEBHOOK_CONFIG_NAME=",
		"PILOT_ENABLE_GATEWAY_API=false", "PILOT_ENABLE_GATEWAY_API_STATUS=false",
		"PILOT_ENABLE_GATEWAY_API_DEPLOYMENT_CONTROLLER=false", "PILOT_ENABLE_GATEWAY_API_GATEWAYCLASS_CONTROLLER=false",
		"PILOT_ENABLE_ANALYSIS=false", "PILOT_ENABLE_IP_AUTOALLOCATE=false", "PILOT_ENABLE_NODE_UNTAINT_CONTROLLERS=false",
		"ENABLE_CLUSTER_TRUST_BUNDLE_API=false"}
}

// ReadyURL answers 200 once it serves.
func (o *Istiod) ReadyURL() string { return "http://" + o.Addrs.HTTP + "/ready" }
