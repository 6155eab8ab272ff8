package node

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/isthmus-mesh/isthmus/internal/sandbox/kubebin"
)

// probeUserAgent is the kubelet's for probes: kube-probe/MAJOR.MINOR of
// the sandbox's Kubernetes release.
var probeUserAgent = func() string {
	v := strings.SplitN(strings.TrimPrefix(kubebin.Version, "v"), ".", 3)
	return "kube-probe/" + v[0] + "." + v[1]
}()

// probe runs the container's startup, readiness and liveness probes for as
// long as the pod runs. Probes come from the node namespace, as a kubelet's do.
func (c *ctr) probe(ctx context.Context) {
	if c.spec.StartupProbe == nil && c.spec.ReadinessProbe == nil && c.spec.LivenessProbe == nil {
		return
	}
	type state struct {
		p          *corev1.Probe
		succ, fail int32
		next       time.Time
	}
	var startup, readiness, liveness *state
	mk := func(p *corev1.Probe) *state {
		if p == nil {
			return nil
		}
		return &state{p: p}
	}
	var instance chan struct{}
	for {
		c.mu.Lock()
		running, exited := c.state.Running != nil && c.cmd != nil, c.exited
		c.mu.Unlock()
		if !running {
			if !sleep(ctx, 100*time.Millisecond) {
				return
			}
			continue
		}
		if exited != instance {
			// A new process: probes start over, after initialDelaySeconds.
			instance = exited
			startup, readiness, liveness = mk(c.spec.StartupProbe), mk(c.spec.ReadinessProbe), mk(c.spec.LivenessProbe)
			now := time.Now()
			for _, s := range []*state{startup, readiness, liveness} {
				if s != nil {
					s.next = now.Add(time.Duration(s.p.InitialDelaySeconds) * time.Second)
				}
			}
		}
		now := time.Now()
		run := func(s *state) (changed, passed bool) {
			if s == nil || now.Before(s.next) {
				return false, false
			}
			s.next = now.Add(seconds(s.p.PeriodSeconds, 10))
			err := c.runProbe(ctx, s.p)
			if err == nil {
				s.succ++
				s.fail = 0
				if s.succ >= max(s.p.SuccessThreshold, 1) {
					return true, true
				}
				return false, false
			}
			s.fail++
			s.succ = 0
			threshold := s.p.FailureThreshold
			if threshold <= 0 {
				threshold = 3 // the API default, should the field be unset
			}
			if s.fail >= threshold {
				return true, false
			}
			return false, false
		}
		c.mu.Lock()
		started := c.started
		c.mu.Unlock()
		if !started && startup != nil {
			if changed, passed := run(startup); changed {
				if passed {
					c.mu.Lock()
					c.started = true
					c.ready = readiness == nil && !c.init
					c.mu.Unlock()
					c.w.markChanged()
				} else {
					c.restart("startup probe failed")
					continue
				}
			}
		} else {
			if changed, passed := run(readiness); changed {
				c.mu.Lock()
				if c.ready != passed {
					c.ready = passed
					c.mu.Unlock()
					c.w.markChanged()
				} else {
					c.mu.Unlock()
				}
			}
			if changed, passed := run(liveness); changed && !passed {
				c.restart("liveness probe failed")
				continue
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-exited:
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (c *ctr) restart(why string) {
	c.w.a.log.Info("restarting container", "pod", c.w.key(), "container", c.spec.Name, "reason", why)
	select {
	case c.probeFail <- struct{}{}:
	default:
	}
	c.mu.Lock()
	exited := c.exited
	c.mu.Unlock()
	<-exited
}

func seconds(v, def int32) time.Duration {
	if v <= 0 {
		v = def
	}
	return time.Duration(v) * time.Second
}

func (c *ctr) runProbe(ctx context.Context, p *corev1.Probe) error {
	timeout := seconds(p.TimeoutSeconds, 1)
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	ip := c.w.podIP()
	switch {
	case p.HTTPGet != nil:
		g := p.HTTPGet
		port, err := c.port(g.Port)
		if err != nil {
			return err
		}
		host := ip.String()
		if g.Host != "" {
			host = g.Host
		}
		scheme := strings.ToLower(string(g.Scheme))
		if scheme == "" {
			scheme = "http"
		}
		path := g.Path
		if !strings.HasPrefix(path, "/") {
			path = "/" + path
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, scheme+"://"+net.JoinHostPort(host, strconv.Itoa(port))+path, nil)
		if err != nil {
			return err
		}
		for _, h := range g.HTTPHeaders {
			req.Header.Add(h.Name, h.Value)
		}
		req.Header.Set("User-Agent", probeUserAgent)
		client := &http.Client{Transport: &http.Transport{
			TLSClientConfig:   &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // kubelet probes do not verify
			DisableKeepAlives: true,
		}, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode < 200 || resp.StatusCode >= 400 {
			return fmt.Errorf("HTTP probe failed with statuscode: %d", resp.StatusCode)
		}
		return nil
	case p.TCPSocket != nil:
		port, err := c.port(p.TCPSocket.Port)
		if err != nil {
			return err
		}
		conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", net.JoinHostPort(ip.String(), strconv.Itoa(port)))
		if err != nil {
			return err
		}
		return conn.Close()
	case p.Exec != nil:
		c.mu.Lock()
		cmd := c.cmd
		c.mu.Unlock()
		if cmd == nil || cmd.Process == nil {
			return fmt.Errorf("container not running")
		}
		out, err := exec.CommandContext(ctx, "nsenter", nsenterArgs(cmd.Process.Pid, p.Exec.Command)...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("exec probe: %w: %s", err, out)
		}
		return nil
	case p.GRPC != nil:
		return fmt.Errorf("gRPC probes are not supported by the sandbox")
	}
	return fmt.Errorf("probe has no handler")
}

// port resolves a numeric or named container port.
func (c *ctr) port(p intstr.IntOrString) (int, error) {
	if p.Type == intstr.Int {
		return p.IntValue(), nil
	}
	for _, cp := range c.spec.Ports {
		if cp.Name == p.StrVal {
			return int(cp.ContainerPort), nil
		}
	}
	return 0, fmt.Errorf("container %s has no port named %q", c.spec.Name, p.StrVal)
}

// nsenterArgs runs argv inside a container's mount, UTS and network
// namespaces, as its user: util-linux nsenter does what a multithreaded Go
// process cannot (setns into a mount namespace).
func nsenterArgs(pid int, argv []string) []string {
	st := strconv.Itoa(pid)
	uid, gid := procIDs(pid)
	// -r and -w: the container's root and directory, its image's when it has one.
	args := []string{"-t", st, "-m", "-u", "-n", "-r", "-w", "-S", uid, "-G", gid, "--"}
	return append(args, argv...)
}

// procIDs reads the effective uid and gid of a process.
func procIDs(pid int) (string, string) {
	b, err := readFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return "0", "0"
	}
	uid, gid := "0", "0"
	for _, line := range strings.Split(b, "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && f[0] == "Uid:" {
			uid = f[2]
		}
		if len(f) >= 3 && f[0] == "Gid:" {
			gid = f[2]
		}
	}
	return uid, gid
}
