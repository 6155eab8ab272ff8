package node

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"time"

	remotecommandconsts "k8s.io/apimachinery/pkg/util/remotecommand"
	"k8s.io/cri-streaming/pkg/streaming/portforward"
	remotecommandserver "k8s.io/cri-streaming/pkg/streaming/remotecommand"

	"github.com/isthmus-mesh/isthmus/internal/sandbox/network"
)

// kubeletPort is where the API server reaches the node, as it reaches a kubelet.
const kubeletPort = 10250

// server is the subset of the kubelet API kubectl needs: logs, exec, port-forward.
type server struct{ agent *Agent }

func (s *server) serve(ctx context.Context) error {
	a := s.agent
	caPEM, err := os.ReadFile(a.cfg.ClientCA)
	if err != nil {
		return fmt.Errorf("kubelet API client CA: %w", err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	cert, err := tls.LoadX509KeyPair(a.cfg.ServingCert, a.cfg.ServingKey)
	if err != nil {
		return fmt.Errorf("kubelet API serving certificate: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok") })
	mux.HandleFunc("GET /containerLogs/{ns}/{pod}/{container}", s.logs)
	mux.HandleFunc("/exec/{ns}/{pod}/{container}", s.exec)
	mux.HandleFunc("/exec/{ns}/{pod}/{uid}/{container}", s.exec)
	mux.HandleFunc("/portForward/{ns}/{pod}", s.portForward)
	mux.HandleFunc("/portForward/{ns}/{pod}/{uid}", s.portForward)
	srv := &http.Server{
		Addr:    net.JoinHostPort(a.cfg.Address.String(), strconv.Itoa(kubeletPort)),
		Handler: authorize(mux),
		TLSConfig: &tls.Config{
			Certificates: []tls.Certificate{cert},
			ClientCAs:    pool,
			ClientAuth:   tls.RequireAndVerifyClientCert,
			MinVersion:   tls.VersionTLS12,
		},
		ReadHeaderTimeout: 10 * time.Second,
	}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	if err := srv.ListenAndServeTLS("", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("kubelet API: %w", err)
	}
	return nil
}

// authorize admits only the API server's kubelet client (system:masters),
// the identity the kubelet's own authorizer would let through.
func authorize(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 || !slices.Contains(r.TLS.PeerCertificates[0].Subject.Organization, "system:masters") {
			http.Error(w, "forbidden: the kubelet API admits the API server only", http.StatusForbidden)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// find returns the worker and container named in a request.
func (s *server) find(ns, pod, container string) (*podWorker, *ctr, error) {
	s.agent.mu.Lock()
	defer s.agent.mu.Unlock()
	for _, w := range s.agent.workers {
		p := w.pod
		if p.Namespace != ns || p.Name != pod {
			continue
		}
		if container == "" {
			return w, nil, nil
		}
		for _, c := range append(append([]*ctr{}, w.ctrs...), w.inits...) {
			if c.spec.Name == container {
				return w, c, nil
			}
		}
		return w, nil, fmt.Errorf("container %s is not valid for pod %s", container, pod)
	}
	return nil, nil, fmt.Errorf("pod %s/%s is not running on this node", ns, pod)
}

func (s *server) logs(w http.ResponseWriter, r *http.Request) {
	_, c, err := s.find(r.PathValue("ns"), r.PathValue("pod"), r.PathValue("container"))
	if err != nil {
		http.Error(w, err.Error(), http.StatusNotFound)
		return
	}
	q := r.URL.Query()
	restarts := c.restartCount()
	if q.Get("previous") == "true" {
		if restarts == 0 {
			http.Error(w, fmt.Sprintf("previous terminated container %q not found", c.spec.Name), http.StatusBadRequest)
			return
		}
		restarts--
	}
	f, err := os.Open(c.logPath(restarts))
	if err != nil {
		http.Error(w, fmt.Sprintf("container %q has no logs yet", c.spec.Name), http.StatusBadRequest)
		return
	}
	defer f.Close()
	if n, err := strconv.Atoi(q.Get("tailLines")); err == nil && n >= 0 {
		if err := seekTail(f, n); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
	}
	w.Header().Set("Content-Type", "text/plain")
	limit := int64(-1)
	if n, err := strconv.ParseInt(q.Get("limitBytes"), 10, 64); err == nil && n > 0 {
		limit = n
	}
	var out io.Writer = w
	if limit > 0 {
		out = &limitWriter{w: w, n: limit}
	}
	if _, err := io.Copy(out, f); err != nil {
		return
	}
	if q.Get("follow") != "true" || (c.previousOnly(restarts)) {
		return
	}
	flusher, _ := w.(http.Flusher)
	for {
		if flusher != nil {
			flusher.Flush()
		}
		select {
		case <-r.Context().Done():
			return
		case <-time.After(200 * time.Millisecond):
		}
		n, _ := io.Copy(out, f)
		if n == 0 && (c.restartCount() != restarts || !c.running()) {
			return
		}
	}
}

func (c *ctr) running() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cmd != nil
}

func (c *ctr) previousOnly(restarts int32) bool { return restarts != c.restartCount() }

// seekTail positions f at the start of its last n lines.
func seekTail(f *os.File, n int) error {
	b, err := io.ReadAll(f)
	if err != nil {
		return err
	}
	lines := bytes.SplitAfter(b, []byte("\n"))
	if len(lines) > 0 && len(lines[len(lines)-1]) == 0 {
		lines = lines[:len(lines)-1]
	}
	skip := 0
	for _, l := range lines[:max(0, len(lines)-n)] {
		skip += len(l)
	}
	_, err = f.Seek(int64(skip), io.SeekStart)
	return err
}

type limitWriter struct {
	w io.Writer
	n int64
}

func (l *limitWriter) Write(p []byte) (int, error) {
	if l.n <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > l.n {
		p = p[:l.n]
	}
	n, err := l.w.Write(p)
	l.n -= int64(n)
	return n, err
}

func (s *server) exec(w http.ResponseWriter, r *http.Request) {
	ns, pod, container := r.PathValue("ns"), r.PathValue("pod"), r.PathValue("container")
	if _, _, err := s.find(ns, pod, container); err != nil {
		http.Error(w, err.Error(), http.StatusNotFound)
		return
	}
	opts, err := remotecommandserver.NewOptions(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	cmd := r.URL.Query()["command"]
	remotecommandserver.ServeExec(w, r, executor{s}, ns+"/"+pod, "", container, cmd, opts,
		4*time.Hour, 30*time.Second, remotecommandconsts.SupportedStreamingProtocols)
}

// executor runs commands in a container's namespaces through nsenter.
type executor struct{ s *server }

func (e executor) ExecInContainer(ctx context.Context, name, _, container string, argv []string, in io.Reader, out, errw io.WriteCloser, tty bool, _ <-chan remotecommandserver.TerminalSize, _ time.Duration) error {
	ns, pod, _ := strings.Cut(name, "/")
	_, c, err := e.s.find(ns, pod, container)
	if err != nil {
		return err
	}
	c.mu.Lock()
	cmd := c.cmd
	c.mu.Unlock()
	if cmd == nil || cmd.Process == nil {
		return fmt.Errorf("container %s is not running", container)
	}
	x := exec.CommandContext(ctx, "nsenter", nsenterArgs(cmd.Process.Pid, argv)...)
	x.Stdin, x.Stdout, x.Stderr = in, out, errw
	if tty && errw == nil {
		x.Stderr = out
	}
	err = x.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return exitError{code: ee.ExitCode()}
	}
	return err
}

// exitError carries the command's exit code back to kubectl.
type exitError struct{ code int }

func (e exitError) Error() string   { return "command terminated with exit code " + strconv.Itoa(e.code) }
func (e exitError) String() string  { return e.Error() }
func (e exitError) Exited() bool    { return true }
func (e exitError) ExitStatus() int { return e.code }

func (s *server) portForward(w http.ResponseWriter, r *http.Request) {
	ns, pod := r.PathValue("ns"), r.PathValue("pod")
	if _, _, err := s.find(ns, pod, ""); err != nil {
		http.Error(w, err.Error(), http.StatusNotFound)
		return
	}
	opts, err := portforward.NewV4Options(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	portforward.ServePortForward(w, r, forwarder{s}, ns+"/"+pod, "", opts, 4*time.Hour, 30*time.Second, portforward.SupportedProtocols)
}

// forwarder dials the pod's port for kubectl port-forward.
type forwarder struct{ s *server }

func (f forwarder) PortForward(ctx context.Context, name string, _ string, port int32, stream io.ReadWriteCloser) error {
	ns, pod, _ := strings.Cut(name, "/")
	wk, _, err := f.s.find(ns, pod, "")
	if err != nil {
		return err
	}
	// As the kubelet does: localhost inside the pod's network namespace,
	// so ports bound to 127.0.0.1 (a proxy's admin 15000) are reachable.
	dial := (&net.Dialer{}).DialContext
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(int(port)))
	if ns, ok := wk.netNS(); ok {
		dial = network.Dialer(ns)
	} else {
		addr = net.JoinHostPort(wk.podIP().String(), strconv.Itoa(int(port)))
	}
	conn, err := dial(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(conn, stream); done <- struct{}{} }()
	go func() { _, _ = io.Copy(stream, bufio.NewReader(conn)); done <- struct{}{} }()
	<-done
	return nil
}
