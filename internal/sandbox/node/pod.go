package node

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	"github.com/isthmus-mesh/isthmus/internal/sandbox/container"
	"github.com/isthmus-mesh/isthmus/internal/sandbox/network"
	"github.com/isthmus-mesh/isthmus/internal/sandbox/process"
)

// Restart back-off: shorter than the kubelet's 10 s..5 min, so a sandbox
// recovers quickly, but still growing so a crash loop does not spin.
const (
	backoffStart = time.Second
	backoffMax   = 30 * time.Second
	// backoffReset: a container that ran this long restarts without delay.
	backoffReset = time.Minute
)

// podWorker owns one pod: its network, volumes and containers.
type podWorker struct {
	a   *Agent
	uid types.UID
	dir string

	mu        sync.Mutex // guards every field below
	pod       *corev1.Pod
	net       network.Pod
	hasNet    bool
	startTime metav1.Time
	setupErr  string
	initDone  bool
	failed    bool // an init container failed under restartPolicy Never
	inits     []*ctr
	ctrs      []*ctr

	changed          chan struct{} // status needs pushing
	deleting         chan struct{} // closed when the pod is being deleted
	removed          chan struct{} // closed when the API object is gone
	done             chan struct{} // closed when the worker has cleaned up
	delOnce, remOnce sync.Once
}

func newPodWorker(a *Agent, p *corev1.Pod) *podWorker {
	w := &podWorker{
		a: a, uid: p.UID, pod: p.DeepCopy(),
		dir:      filepath.Join(a.podsDir(), string(p.UID)),
		changed:  make(chan struct{}, 1),
		deleting: make(chan struct{}),
		removed:  make(chan struct{}),
		done:     make(chan struct{}),
	}
	for _, c := range p.Spec.InitContainers {
		w.inits = append(w.inits, newCtr(w, c, true))
	}
	for _, c := range p.Spec.Containers {
		w.ctrs = append(w.ctrs, newCtr(w, c, false))
	}
	return w
}

func (w *podWorker) update(p *corev1.Pod) {
	w.mu.Lock()
	w.pod = p.DeepCopy()
	w.mu.Unlock()
	if p.DeletionTimestamp != nil {
		w.delOnce.Do(func() { close(w.deleting) })
		return
	}
	// Someone else wrote the pod's status (the node lifecycle controller
	// sets Ready=False on every pod of a node it finds NotReady): the
	// kubelet's status manager writes its own view back, or the pod
	// would stay out of its Services after the node is Ready again.
	if drifted(p.Status, w.status(p.Status)) {
		w.markChanged()
	}
}

// drifted says whether the API's status of a pod differs from the
// agent's in what others act on: the phase and readiness.
func drifted(api, own corev1.PodStatus) bool {
	if api.Phase != own.Phase {
		return true
	}
	for _, t := range []corev1.PodConditionType{corev1.PodReady, corev1.ContainersReady} {
		if condition(api, t) != condition(own, t) {
			return true
		}
	}
	return false
}

func condition(st corev1.PodStatus, t corev1.PodConditionType) corev1.ConditionStatus {
	for _, c := range st.Conditions {
		if c.Type == t {
			return c.Status
		}
	}
	return ""
}

func (w *podWorker) remove() {
	w.delOnce.Do(func() { close(w.deleting) })
	w.remOnce.Do(func() { close(w.removed) })
}

// shutdown stops the pod's processes when the agent stops (not a deletion:
// the pod object stays and a later agent runs it again).
func (w *podWorker) shutdown() {
	w.remove()
	<-w.done
}

func (w *podWorker) markChanged() {
	select {
	case w.changed <- struct{}{}:
	default:
	}
}

func (w *podWorker) snapshot() *corev1.Pod {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.pod.DeepCopy()
}

// run drives the pod from first sight to deletion.
func (w *podWorker) run(ctx context.Context) {
	defer close(w.done)
	defer w.a.forget(w.uid)
	pctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { w.lifecycle(pctx) })
	wg.Go(func() { w.statusLoop(pctx) })
	select {
	case <-ctx.Done():
	case <-w.deleting:
	}
	cancel()
	w.stopContainers(w.grace())
	wg.Wait()
	w.teardown()
	select {
	case <-w.removed:
	default:
		if ctx.Err() == nil {
			w.finalDelete(ctx)
		}
	}
}

func (w *podWorker) grace() time.Duration {
	p := w.snapshot()
	if p.DeletionGracePeriodSeconds != nil {
		return time.Duration(*p.DeletionGracePeriodSeconds) * time.Second
	}
	if p.Spec.TerminationGracePeriodSeconds != nil {
		return time.Duration(*p.Spec.TerminationGracePeriodSeconds) * time.Second
	}
	return 30 * time.Second
}

// lifecycle sets the pod up, runs init containers in order, then the containers.
func (w *podWorker) lifecycle(ctx context.Context) {
	w.mu.Lock()
	w.startTime = metav1.Now()
	w.mu.Unlock()
	for attempt := 0; ; attempt++ {
		err := w.setup(ctx)
		if err == nil {
			break
		}
		w.a.log.Warn("pod setup", "pod", w.key(), "err", err)
		w.mu.Lock()
		w.setupErr = err.Error()
		w.mu.Unlock()
		w.markChanged()
		if !sleep(ctx, backoff(attempt)) {
			return
		}
	}
	w.mu.Lock()
	w.setupErr = ""
	w.mu.Unlock()
	w.markChanged()
	go w.refreshVolumes(ctx)

	for _, c := range w.inits {
		if !c.runToCompletion(ctx) {
			return
		}
	}
	w.mu.Lock()
	w.initDone = true
	w.mu.Unlock()
	w.markChanged()
	var wg sync.WaitGroup
	for _, c := range w.ctrs {
		wg.Go(func() { c.supervise(ctx) })
		wg.Go(func() { c.probe(ctx) })
	}
	wg.Wait()
}

// setup allocates the address, wires the network, writes volumes and DNS files.
func (w *podWorker) setup(ctx context.Context) error {
	p := w.snapshot()
	if err := os.MkdirAll(w.dir, 0o755); err != nil {
		return err
	}
	if !p.Spec.HostNetwork {
		ip, err := w.a.ipam.allocate(w.uid)
		if err != nil {
			return err
		}
		pn := network.PodNetwork(string(w.uid), ip)
		if err := network.SetupPod(w.a.cfg.NodeNS, pn); err != nil {
			return fmt.Errorf("pod network: %w", err)
		}
		w.mu.Lock()
		w.net, w.hasNet = pn, true
		w.mu.Unlock()
	}
	if err := w.writeDNS(p); err != nil {
		return err
	}
	return w.writeVolumes(ctx, p)
}

// netNS names the pod's network namespace; false for host-network pods
// and pods whose network is not set up.
func (w *podWorker) netNS() (string, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.net.NS, w.hasNet && !w.pod.Spec.HostNetwork
}

// podIP is the pod's address (the node's for host-network pods).
func (w *podWorker) podIP() netip.Addr {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.pod.Spec.HostNetwork {
		return w.a.cfg.Address
	}
	if w.hasNet {
		return w.net.IP
	}
	return netip.Addr{}
}

func (w *podWorker) netns() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.pod.Spec.HostNetwork || !w.hasNet {
		return w.a.cfg.NodeNS
	}
	return w.net.NS
}

func (w *podWorker) writeDNS(p *corev1.Pod) error {
	domain := w.a.cfg.ClusterDomain
	resolv := fmt.Sprintf("search %s.svc.%s svc.%s %s\nnameserver %s\noptions ndots:5\n", p.Namespace, domain, domain, domain, w.a.cfg.DNSServer)
	if p.Spec.DNSConfig != nil {
		for _, ns := range p.Spec.DNSConfig.Nameservers {
			resolv += "nameserver " + ns + "\n"
		}
	}
	hosts := "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
	if ip := w.podIP(); ip.IsValid() {
		hosts += fmt.Sprintf("%s\t%s\n", ip, p.Name)
	}
	if err := os.WriteFile(filepath.Join(w.dir, "resolv.conf"), []byte(resolv), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(w.dir, "hosts"), []byte(hosts), 0o644)
}

func (w *podWorker) stopContainers(grace time.Duration) {
	var wg sync.WaitGroup
	for _, c := range append(append([]*ctr{}, w.ctrs...), w.inits...) {
		wg.Go(func() { c.stop(grace) })
	}
	wg.Wait()
}

func (w *podWorker) teardown() {
	w.mu.Lock()
	pn, has := w.net, w.hasNet
	w.hasNet = false
	w.mu.Unlock()
	if has {
		killNS(pn.NS)
		if err := network.TeardownPod(w.a.cfg.NodeNS, pn); err != nil {
			w.a.log.Warn("pod network teardown", "pod", w.key(), "err", err)
		}
	}
	w.a.ipam.release(w.uid)
	_ = os.RemoveAll(w.dir)
}

// finalDelete removes the pod object once its processes are gone, as the
// kubelet does, so the API server stops waiting for the grace period.
func (w *podWorker) finalDelete(ctx context.Context) {
	p := w.snapshot()
	err := w.a.cs.CoreV1().Pods(p.Namespace).Delete(ctx, p.Name, metav1.DeleteOptions{
		GracePeriodSeconds: ptr.To[int64](0),
		Preconditions:      &metav1.Preconditions{UID: &p.UID},
	})
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		w.a.log.Warn("final pod delete", "pod", w.key(), "err", err)
	}
}

func (w *podWorker) key() string {
	p := w.snapshot()
	return p.Namespace + "/" + p.Name
}

// killNS kills every process still in a pod namespace (helpers, children).
func killNS(ns string) {
	pids, _ := network.PIDs(ns)
	for _, pid := range pids {
		_ = process.Kill(context.Background(), pid, 2*time.Second)
	}
}

func backoff(attempt int) time.Duration {
	d := backoffStart << min(attempt, 5)
	return min(d, backoffMax)
}

func sleep(ctx context.Context, d time.Duration) bool {
	select {
	case <-ctx.Done():
		return false
	case <-time.After(d):
		return true
	}
}

// ctr is one container of the pod and its runtime state.
type ctr struct {
	w    *podWorker
	spec corev1.Container
	init bool

	mu        sync.Mutex // guards the fields below
	state     corev1.ContainerState
	lastState corev1.ContainerState
	restarts  int32
	ready     bool
	started   bool // startup probe passed (or none)
	cmd       *exec.Cmd
	imageID   string        // what the running process was started from
	exited    chan struct{} // closed when the current process exits
	probeFail chan struct{} // liveness asks for a restart
}

func newCtr(w *podWorker, c corev1.Container, init bool) *ctr {
	return &ctr{w: w, spec: c, init: init, state: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "ContainerCreating"}}, probeFail: make(chan struct{}, 1)}
}

func (c *ctr) logPath(restarts int32) string {
	return filepath.Join(c.w.dir, "logs", c.spec.Name, strconv.Itoa(int(restarts))+".log")
}

func (c *ctr) setWaiting(reason, msg string) {
	c.mu.Lock()
	c.state = corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: reason, Message: msg}}
	c.ready = false
	c.mu.Unlock()
	c.w.markChanged()
}

// start launches one process of the container.
func (c *ctr) start(ctx context.Context) error {
	p := c.w.snapshot()
	proc, err := c.resolveImage(ctx)
	if err != nil {
		var unknown container.ErrUnknownImage
		if errors.As(err, &unknown) {
			c.setWaiting("ErrImagePull", err.Error())
		} else if c.waitingReason() == "" {
			c.setWaiting("CreateContainerConfigError", err.Error())
		}
		return err
	}
	env, err := c.w.env(ctx, p, c.spec, proc.env)
	if err != nil {
		c.setWaiting("CreateContainerConfigError", err.Error())
		return err
	}
	mounts, err := c.w.mounts(p, c.spec)
	if err != nil {
		c.setWaiting("CreateContainerConfigError", err.Error())
		return err
	}
	uid, gid, set := identity(p, c.spec)
	if !set && proc.root != nil {
		if uid, gid, err = imageUser(proc.user, proc.root.Layers); err != nil {
			c.setWaiting("CreateContainerConfigError", err.Error())
			return err
		}
	}
	c.mu.Lock()
	restarts := c.restarts
	c.mu.Unlock()
	if err := os.MkdirAll(filepath.Dir(c.logPath(restarts)), 0o755); err != nil {
		return err
	}
	log, err := os.OpenFile(c.logPath(restarts), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	defer log.Close()
	spec := container.Spec{Argv: proc.argv, Env: env, Dir: proc.dir, UID: uid, GID: gid, Hostname: p.Name, Mounts: mounts, Root: proc.root}
	cmd, err := container.Start(c.w.a.cfg.Self, c.w.netns(), filepath.Join(c.w.dir, "spec-"+c.spec.Name+".json"), spec, log)
	if err != nil {
		c.setWaiting("RunContainerError", err.Error())
		return err
	}
	exited := make(chan struct{})
	c.mu.Lock()
	c.cmd, c.exited = cmd, exited
	c.imageID = proc.imageID
	c.state = corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: metav1.Now()}}
	c.started = c.spec.StartupProbe == nil
	c.ready = c.spec.ReadinessProbe == nil && c.started && !c.init
	c.mu.Unlock()
	c.w.markChanged()
	return nil
}

// wait blocks until the current process exits and records how it ended.
func (c *ctr) wait() int32 {
	c.mu.Lock()
	cmd, exited := c.cmd, c.exited
	c.mu.Unlock()
	err := cmd.Wait()
	code := int32(0)
	reason := "Completed"
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if st, ok := ee.Sys().(syscall.WaitStatus); ok && st.Signaled() {
			code = 128 + int32(st.Signal())
		} else {
			code = int32(ee.ExitCode())
		}
	} else if err != nil {
		code = 128
	}
	if code != 0 {
		reason = "Error"
	}
	// Kill what the container left in its process group.
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	c.mu.Lock()
	started := time.Time{}
	if c.state.Running != nil {
		started = c.state.Running.StartedAt.Time
	}
	c.state = corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
		ExitCode: code, Reason: reason, StartedAt: metav1.NewTime(started), FinishedAt: metav1.Now(),
		ContainerID: containerID(cmd.Process.Pid),
	}}
	c.ready = false
	c.cmd = nil
	c.mu.Unlock()
	close(exited)
	c.w.markChanged()
	return code
}

// runToCompletion runs an init container until it succeeds; false means the
// pod cannot proceed (context ended or restartPolicy Never after a failure).
func (c *ctr) runToCompletion(ctx context.Context) bool {
	for attempt := 0; ; attempt++ {
		if err := c.start(ctx); err == nil {
			if c.wait() == 0 {
				return true
			}
			if c.w.snapshot().Spec.RestartPolicy == corev1.RestartPolicyNever {
				c.w.mu.Lock()
				c.w.failed = true
				c.w.mu.Unlock()
				c.w.markChanged()
				return false
			}
			c.bumpRestarts()
		}
		if !sleep(ctx, backoff(attempt)) {
			return false
		}
	}
}

func (c *ctr) bumpRestarts() {
	c.mu.Lock()
	c.lastState = c.state
	c.restarts++
	c.mu.Unlock()
}

// supervise runs a regular container and restarts it per the pod's policy.
func (c *ctr) supervise(ctx context.Context) {
	attempt := 0
	for {
		if err := c.start(ctx); err != nil {
			c.w.a.log.Info("container not started", "pod", c.w.key(), "container", c.spec.Name, "err", err)
			attempt++
			if !sleep(ctx, backoff(attempt)) {
				return
			}
			continue
		}
		began := time.Now()
		done := make(chan int32, 1)
		go func() { done <- c.wait() }()
		var code int32
		select {
		case code = <-done:
		case <-ctx.Done():
			return // stop() kills the process; wait() records it
		case <-c.probeFail:
			c.kill(c.gracePeriod())
			code = <-done
		}
		policy := c.w.snapshot().Spec.RestartPolicy
		if policy == corev1.RestartPolicyNever || (policy == corev1.RestartPolicyOnFailure && code == 0) {
			return
		}
		c.bumpRestarts()
		if time.Since(began) > backoffReset {
			attempt = 0
		}
		d := backoff(attempt)
		attempt++
		c.setWaitingKeep("CrashLoopBackOff", fmt.Sprintf("back-off %s restarting failed container %s", d, c.spec.Name))
		if !sleep(ctx, d) {
			return
		}
	}
}

// setWaitingKeep moves to Waiting while keeping lastState from bumpRestarts.
func (c *ctr) setWaitingKeep(reason, msg string) {
	c.mu.Lock()
	c.state = corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: reason, Message: msg}}
	c.mu.Unlock()
	c.w.markChanged()
}

func (c *ctr) gracePeriod() time.Duration {
	return c.w.grace()
}

// kill sends SIGTERM to the container's process group, then SIGKILL after grace.
func (c *ctr) kill(grace time.Duration) {
	c.mu.Lock()
	cmd, exited := c.cmd, c.exited
	c.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(grace):
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-exited
	}
}

// stop ends the container for good (pod deletion or agent shutdown).
func (c *ctr) stop(grace time.Duration) {
	c.mu.Lock()
	cmd := c.cmd
	c.mu.Unlock()
	if cmd != nil {
		c.kill(grace)
	}
}

func containerID(pid int) string { return "isthmus://" + strconv.Itoa(pid) }

// identity picks the container's uid and gid: container securityContext
// over pod securityContext; set is false when neither names a user (the
// image's USER then applies).
func identity(p *corev1.Pod, c corev1.Container) (uid, gid uint32, set bool) {
	var u, g *int64
	if sc := p.Spec.SecurityContext; sc != nil {
		u, g = sc.RunAsUser, sc.RunAsGroup
	}
	if sc := c.SecurityContext; sc != nil {
		if sc.RunAsUser != nil {
			u = sc.RunAsUser
		}
		if sc.RunAsGroup != nil {
			g = sc.RunAsGroup
		}
	}
	if u != nil {
		uid, set = uint32(*u), true
	}
	if g != nil {
		gid = uint32(*g)
	} else {
		gid = uid
	}
	return uid, gid, set
}

// waitingReason is the container's current Waiting reason, if any.
func (c *ctr) waitingReason() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state.Waiting == nil || c.state.Waiting.Reason == "ContainerCreating" {
		return ""
	}
	return c.state.Waiting.Reason
}
