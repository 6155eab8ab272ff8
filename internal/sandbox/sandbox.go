package sandbox

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/yaml"

	"github.com/isthmus-mesh/isthmus/internal/sandbox/controlplane"
	"github.com/isthmus-mesh/isthmus/internal/sandbox/kubebin"
	"github.com/isthmus-mesh/isthmus/internal/sandbox/network"
	"github.com/isthmus-mesh/isthmus/internal/sandbox/process"
)

// Sandbox is a set of clusters kept under one state directory.
type Sandbox struct {
	Layout Layout
	Config Config
	// CacheDir is the root of the binary cache (see kubebin.CacheDir).
	CacheDir string
	// Progress receives one human-readable line per step; it may be nil.
	Progress func(string)

	mu sync.Mutex // serializes Progress calls from concurrent cluster starts
}

// ErrNotRoot is returned when the caller cannot create namespaces.
var ErrNotRoot = errors.New("the sandbox needs root: it creates network namespaces and runs Kubernetes components (try: sudo isthmus sandbox up)")

// startTimeout bounds the wait for one component to become healthy.
const startTimeout = 90 * time.Second

func (s *Sandbox) say(format string, args ...any) {
	if s.Progress == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.Progress(fmt.Sprintf(format, args...))
}

func requireRoot() error {
	if os.Geteuid() != 0 {
		return ErrNotRoot
	}
	return nil
}

func (s *Sandbox) clusters(bins kubebin.Set) []*controlplane.Cluster {
	out := make([]*controlplane.Cluster, len(s.Config.Clusters))
	self, _ := os.Executable()
	for i, cc := range s.Config.Clusters {
		labels := map[string]string{}
		if cc.Region != "" {
			labels[corev1.LabelTopologyRegion] = cc.Region
		}
		if cc.Zone != "" {
			labels[corev1.LabelTopologyZone] = cc.Zone
		}
		out[i] = &controlplane.Cluster{
			Name:        cc.Name,
			Dir:         s.Layout.ClusterDir(cc.Name),
			NS:          network.NodeNS(cc.Name),
			Addr:        AddressesOf(i).Node,
			Bins:        bins,
			Self:        self,
			NodeLabels:  labels,
			LBPool:      AddressesOf(i).LBPrefix,
			LBHostnames: cc.Hostnames(),
			DNSUpstream: DNSAddr,
			PodCIDR:     AddressesOf(i).PodCIDR,
			ServiceCIDR: AddressesOf(i).Services,
			Mirrors:     Mirrors(),
		}
	}
	return out
}

func (s *Sandbox) nodes() []network.Node {
	nodes := make([]network.Node, len(s.Config.Clusters))
	for i, cc := range s.Config.Clusters {
		a := AddressesOf(i)
		nodes[i] = network.Node{NS: network.NodeNS(cc.Name), Index: i + 1, Addr: a.Node, Owned: a.LBPrefix}
	}
	return nodes
}

// Up builds what is missing, then starts every cluster and waits until each
// serves requests. Components already running and healthy are left alone.
func (s *Sandbox) Up(ctx context.Context) error {
	if err := requireRoot(); err != nil {
		return err
	}
	if err := s.Config.Validate(); err != nil {
		return err
	}
	if err := s.adoptState(ctx); err != nil {
		return err
	}
	start := time.Now()
	bins, err := kubebin.Ensure(ctx, s.CacheDir, func(line string) { s.say("%s", line) })
	if err != nil {
		return err
	}
	if err := network.Ensure(s.nodes()); err != nil {
		return fmt.Errorf("build networks: %w", err)
	}
	if err := s.writeConfig(); err != nil {
		return err
	}
	self, _ := os.Executable()
	if err := s.upRegistry(ctx, self); err != nil {
		return err
	}
	clusters := s.clusters(bins)
	errs := make([]error, len(clusters))
	var wg sync.WaitGroup
	for i, c := range clusters {
		wg.Go(func() { errs[i] = s.upCluster(ctx, c) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if err := s.writeKubeconfig(clusters); err != nil {
		return err
	}
	if err := s.upCloud(ctx, self); err != nil {
		return err
	}
	s.say("sandbox ready in %s: %d clusters; kubeconfig %s", time.Since(start).Round(100*time.Millisecond), len(clusters), s.Layout.Kubeconfig())
	return nil
}

// adoptState compares the requested clusters with a sandbox already in the
// state directory: the same set is resumed; a different one is refused while
// it runs, and cleaned away if it is only leftovers.
func (s *Sandbox) adoptState(ctx context.Context) error {
	old, err := LoadConfig(s.Layout.ConfigFile())
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		s.say("state directory has an unreadable config (%v); cleaning it", err)
		return os.RemoveAll(s.Layout.Dir)
	}
	if reflect.DeepEqual(old, s.Config) {
		return nil
	}
	prev := &Sandbox{Layout: s.Layout, Config: old, CacheDir: s.CacheDir, Progress: s.Progress}
	if resized(old, s.Config) {
		return s.resize(ctx, prev)
	}
	for _, st := range prev.status(ctx, false) {
		if st.Running {
			return fmt.Errorf("a sandbox with other settings (clusters %s) is running from %s; run `isthmus sandbox down` first", old.names(), s.Layout.Dir)
		}
	}
	s.say("cleaning leftovers of an earlier sandbox (%s)", old.names())
	return prev.Down(ctx)
}

// resized reports whether next keeps every cluster of prev that it lists
// unchanged and in its place (a cluster's position decides its addresses),
// only adding clusters after them or dropping the last ones.
func resized(prev, next Config) bool {
	n := min(len(prev.Clusters), len(next.Clusters))
	return reflect.DeepEqual(prev.Clusters[:n], next.Clusters[:n])
}

// resize turns the running sandbox prev into s: clusters only prev lists
// are removed, new ones come up with the rest of Up, the clusters both
// list keep running untouched (a mesh across them goes on serving). The
// cloud serves the hostname clusters it read at its start, so it restarts
// when that set changes.
func (s *Sandbox) resize(ctx context.Context, prev *Sandbox) error {
	var errs []error
	gone := prev.clusters(kubebin.Set{})[min(len(prev.Config.Clusters), len(s.Config.Clusters)):]
	for _, c := range gone {
		s.say("%s: removing (not in the new config)", c.Name)
		errs = append(errs, removeCluster(ctx, c))
	}
	if hostnameClusters(prev.Config) != hostnameClusters(s.Config) {
		self, _ := os.Executable()
		errs = append(errs, process.Stop(ctx, s.cloudComponent(self).Spec.PID, 10*time.Second))
	}
	if err := errors.Join(errs...); err != nil {
		// The old config stays: the next up (or down) still knows the
		// clusters that could not be removed, and tries again.
		return err
	}
	if len(gone) > 0 {
		// Up writes it again; a shrunk sandbox must not keep the old list
		// if it fails before that.
		return s.writeConfig()
	}
	return nil
}

func hostnameClusters(c Config) string {
	out := ""
	for _, cl := range c.Clusters {
		if cl.Hostnames() {
			out += cl.Name + ","
		}
	}
	return out
}

// removeCluster stops one cluster's components and pods and deletes its
// network namespaces and state directory, as Down does for every cluster.
// Its link into the internet namespace goes with its node namespace.
func removeCluster(ctx context.Context, c *controlplane.Cluster) error {
	var errs []error
	comps := c.Components()
	for i := len(comps) - 1; i >= 0; i-- {
		if err := process.Stop(ctx, comps[i].Spec.PID, 10*time.Second); err != nil {
			errs = append(errs, fmt.Errorf("%s: stop %s: %w", c.Name, comps[i].Name, err))
		}
	}
	namespaces := []string{c.NS}
	pods, _ := os.ReadDir(filepath.Join(c.Dir, "node", "pods"))
	for _, p := range pods {
		namespaces = append(namespaces, network.PodNetwork(p.Name(), netip.Addr{}).NS)
	}
	errs = append(errs, killIn(ctx, namespaces)...)
	if err := network.Teardown(namespaces); err != nil {
		errs = append(errs, err)
	}
	if len(errs) == 0 {
		if err := os.RemoveAll(c.Dir); err != nil {
			errs = append(errs, fmt.Errorf("%s: remove state: %w", c.Name, err))
		}
	}
	return errors.Join(errs...)
}

// killIn kills every process inside the named network namespaces (those
// that exist): a process left there keeps its namespace alive.
func killIn(ctx context.Context, namespaces []string) []error {
	var errs []error
	for _, ns := range namespaces {
		if !network.Exists(ns) {
			continue
		}
		pids, err := network.PIDs(ns)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, pid := range pids {
			if err := process.Kill(ctx, pid, 5*time.Second); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", ns, err))
			}
		}
	}
	return errs
}

func (c Config) names() string {
	out := ""
	for i, cl := range c.Clusters {
		if i > 0 {
			out += ", "
		}
		out += cl.Name
	}
	return out
}

func (s *Sandbox) upCluster(ctx context.Context, c *controlplane.Cluster) error {
	start := time.Now()
	if err := c.Prepare(); err != nil {
		return fmt.Errorf("%s: %w", c.Name, err)
	}
	for _, comp := range c.Components() {
		running, err := ensureRunning(ctx, c.NS, comp)
		if err != nil {
			return fmt.Errorf("%s: %w", c.Name, err)
		}
		if running {
			s.say("%s: %s already running", c.Name, comp.Name)
		} else {
			s.say("%s: %s ready (%s)", c.Name, comp.Name, time.Since(start).Round(100*time.Millisecond))
		}
	}
	if err := waitControllers(ctx, c); err != nil {
		return fmt.Errorf("%s: %w (logs in %s/logs)", c.Name, err, c.Dir)
	}
	s.say("%s: ready at %s (%s)", c.Name, c.APIServerURL(), time.Since(start).Round(100*time.Millisecond))
	return nil
}

// ensureRunning starts a component in network namespace ns unless it runs
// already; either way it returns once the component answers. running says
// it was up before.
func ensureRunning(ctx context.Context, ns string, comp controlplane.Component) (running bool, err error) {
	if _, alive := process.Alive(comp.Spec.PID); alive {
		if err := waitHealthy(ctx, comp, startTimeout); err != nil {
			return true, fmt.Errorf("%s is running but unhealthy: %w (log: %s)", comp.Name, err, comp.Spec.Log)
		}
		return true, nil
	}
	for _, port := range comp.Ports {
		if err := network.CheckPort(ns, port); err != nil {
			return false, fmt.Errorf("cannot start %s: %w", comp.Name, err)
		}
	}
	if _, err := process.Start(comp.Spec); err != nil {
		return false, err
	}
	if err := waitHealthy(ctx, comp, startTimeout); err != nil {
		return false, fmt.Errorf("%s did not become healthy within %s: %w; its log is %s", comp.Name, startTimeout, err, comp.Spec.Log)
	}
	return false, nil
}

func waitHealthy(ctx context.Context, comp controlplane.Component, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last error
	for {
		if _, alive := process.Alive(comp.Spec.PID); !alive {
			return errors.New("the process exited")
		}
		if last = comp.Health(ctx); last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return last
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// waitControllers waits for the `default` ServiceAccount, proof that the
// controller manager reconciles against this API server.
func waitControllers(ctx context.Context, c *controlplane.Cluster) error {
	cfg, err := c.AdminConfig()
	if err != nil {
		return err
	}
	rest, err := clientcmd.NewDefaultClientConfig(*cfg, nil).ClientConfig()
	if err != nil {
		return err
	}
	cs, err := kubernetes.NewForConfig(rest)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	for {
		_, err := cs.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{})
		if err == nil {
			return nil
		}
		if !apierrors.IsNotFound(err) && ctx.Err() != nil {
			return fmt.Errorf("API server unreachable: %w", err)
		}
		select {
		case <-ctx.Done():
			return errors.New("the controller manager did not create the default ServiceAccount in time")
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (s *Sandbox) writeConfig() error {
	if err := os.MkdirAll(s.Layout.Dir, 0o755); err != nil {
		return fmt.Errorf("create state directory: %w", err)
	}
	b, err := yaml.Marshal(s.Config)
	if err != nil {
		return err
	}
	return os.WriteFile(s.Layout.ConfigFile(), b, 0o644)
}

func (s *Sandbox) writeKubeconfig(clusters []*controlplane.Cluster) error {
	merged := clientcmdapi.NewConfig()
	for _, c := range clusters {
		cfg, err := c.AdminConfig()
		if err != nil {
			return fmt.Errorf("%s: %w", c.Name, err)
		}
		merged.Clusters[c.Name] = cfg.Clusters[c.Name]
		merged.AuthInfos[c.Name] = cfg.AuthInfos[c.Name]
		merged.Contexts[c.Name] = cfg.Contexts[c.Name]
	}
	merged.CurrentContext = clusters[0].Name
	if err := clientcmd.WriteToFile(*merged, s.Layout.Kubeconfig()); err != nil {
		return fmt.Errorf("write kubeconfig: %w", err)
	}
	return os.Chmod(s.Layout.Kubeconfig(), 0o600)
}

// Down stops every process the sandbox started, removes its namespaces and
// links, and deletes the state directory. Binaries stay cached.
func (s *Sandbox) Down(ctx context.Context) error {
	if err := requireRoot(); err != nil {
		return err
	}
	var errs []error
	var names []string
	for _, c := range s.clusters(kubebin.Set{}) {
		comps := c.Components()
		for i := len(comps) - 1; i >= 0; i-- {
			if err := process.Stop(ctx, comps[i].Spec.PID, 10*time.Second); err != nil {
				errs = append(errs, fmt.Errorf("%s: stop %s: %w", c.Name, comps[i].Name, err))
			}
		}
		names = append(names, c.NS)
	}
	// Anything else still inside our namespaces was started through the
	// sandbox too (a pod, a debugging shell): it must not keep them alive.
	errs = append(errs, killIn(ctx, append(append(names, network.InternetNS), network.PodNamespaces()...))...)
	if err := network.TeardownAll(names); err != nil {
		errs = append(errs, err)
	}
	if len(errs) == 0 {
		if err := os.RemoveAll(s.Layout.Dir); err != nil {
			errs = append(errs, fmt.Errorf("remove state directory: %w", err))
		}
	}
	return errors.Join(errs...)
}

// ComponentStatus is one row of `sandbox status`.
type ComponentStatus struct {
	Cluster   string
	Network   string
	Component string
	PID       int
	Running   bool
	Healthy   bool
	Detail    string
}

// Status reports every component of every cluster.
func (s *Sandbox) Status(ctx context.Context) []ComponentStatus {
	return s.status(ctx, true)
}

func (s *Sandbox) status(ctx context.Context, probe bool) []ComponentStatus {
	var out []ComponentStatus
	for i, c := range s.clusters(kubebin.Set{}) {
		for _, comp := range c.Components() {
			out = append(out, componentStatus(ctx, c.Name, s.Config.Clusters[i].Network, comp, probe))
		}
	}
	self, _ := os.Executable()
	return append(out,
		componentStatus(ctx, "(sandbox)", "internet", s.registry(self), probe),
		componentStatus(ctx, "(sandbox)", "internet", s.cloudComponent(self), probe))
}

// componentStatus is one row: whether the process runs and, when probe
// is set, whether it answers.
func componentStatus(ctx context.Context, cluster, net string, comp controlplane.Component, probe bool) ComponentStatus {
	st := ComponentStatus{Cluster: cluster, Network: net, Component: comp.Name}
	st.PID, st.Running = process.Alive(comp.Spec.PID)
	switch {
	case !st.Running:
		st.Detail = "not running"
		st.PID = 0
	case probe:
		hctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		if err := comp.Health(hctx); err != nil {
			st.Detail = err.Error()
		} else {
			st.Healthy = true
		}
		cancel()
	}
	return st
}
