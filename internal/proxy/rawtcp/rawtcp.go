// Package rawtcp reads and writes TCP connections with raw system calls.
//
// Go's net package makes each read and write through syscall.Syscall, which
// tells the scheduler that the thread may block: the call wakes the
// runtime's monitor thread if it sleeps (a futex), keeps it polling every
// 20 µs, and lets it hand the thread's P to another thread when a call
// lasts over 20 µs, which a write often does, because the kernel delivers
// the packet to a local receiver inside the write. A proxy's sockets are
// non-blocking, so a read or write never blocks and those costs buy
// nothing: through two sidecars at full speed they were 40% of the context
// switches per HTTP request and about a tenth of the CPU (BENCHMARKS.md,
// "Reading the goals"). Waiting is unchanged: a call that would block
// waits in Go's poller, deadlines and Close included, through
// syscall.RawConn. Race builds make the calls through syscall.Read and
// syscall.Write instead (sys_race.go).
package rawtcp

import (
	"io"
	"net"
	"os"
	"sync"
	"syscall"
)

// maxRW caps one system call, as internal/poll does.
const maxRW = 1 << 30

// Conn is a *net.TCPConn whose Read and Write are raw system calls. It
// shows the TCPConn's net.Conn methods, CloseWrite and SyscallConn, but
// not its ReadFrom and WriteTo, so io.Copy goes through Read and Write
// rather than splice(2): for the small exchanges of request and answer,
// splice's two calls per chunk through a pipe, each one the scheduler
// watches, cost more than copying (the east-west gateway's added median
// latency went from 0.18 to 0.11 ms without it, BENCHMARKS.md).
type Conn struct {
	net.Conn
	tcp    *net.TCPConn
	rc     syscall.RawConn
	rd, wr op
}

// op is the Read or the Write under way on a connection. Its callback for
// syscall.RawConn is made once per connection: a closure per call would
// cost an allocation per read and write.
type op struct {
	mu    sync.Mutex // concurrent Reads (or Writes) take turns, as net's do
	b     []byte
	n     int
	errno syscall.Errno
	fn    func(fd uintptr) bool
}

// Wrap returns c as a Conn if it is a *net.TCPConn, else c itself.
func Wrap(c net.Conn) net.Conn {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return c
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return c
	}
	w := &Conn{Conn: tc, tcp: tc, rc: rc}
	w.rd.fn, w.wr.fn = w.rd.read, w.wr.write
	return w
}

// Read reads what the socket holds, waiting in the poller if it holds nothing.
func (c *Conn) Read(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	if len(b) > maxRW {
		b = b[:maxRW]
	}
	n, errno, err := c.rd.do(c.rc.Read, b)
	if err != nil {
		return 0, c.opError("read", err)
	}
	if errno != 0 {
		return 0, c.opError("read", os.NewSyscallError("read", errno))
	}
	if n == 0 {
		return 0, io.EOF
	}
	return n, nil
}

// Write writes all of b, waiting in the poller while the socket's buffer is full.
func (c *Conn) Write(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	n, errno, err := c.wr.do(c.rc.Write, b)
	if err != nil {
		return n, c.opError("write", err)
	}
	if errno != 0 {
		return n, c.opError("write", os.NewSyscallError("write", errno))
	}
	return n, nil
}

// do runs the op over b through RawConn's Read or Write.
func (o *op) do(raw func(func(uintptr) bool) error, b []byte) (int, syscall.Errno, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.b, o.n, o.errno = b, 0, 0
	err := raw(o.fn)
	o.b = nil // the caller's buffer is not ours to keep
	return o.n, o.errno, err
}

// read is one read(2); false (nothing yet) makes RawConn wait in the poller.
func (o *op) read(fd uintptr) bool {
	for {
		r, e := sysRead(fd, o.b)
		switch e {
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false
		}
		o.n, o.errno = r, e
		return true
	}
}

// write writes what is left of b; false (socket buffer full) waits.
func (o *op) write(fd uintptr) bool {
	for o.n < len(o.b) {
		chunk := o.b[o.n:]
		if len(chunk) > maxRW {
			chunk = chunk[:maxRW]
		}
		r, e := sysWrite(fd, chunk)
		switch e {
		case 0:
			o.n += r
		case syscall.EINTR:
		case syscall.EAGAIN:
			return false
		default:
			o.errno = e
			return true
		}
	}
	return true
}

// CloseWrite shuts down the sending side (half-close).
func (c *Conn) CloseWrite() error { return c.tcp.CloseWrite() }

// SyscallConn is the socket's, for socket options and peeks.
func (c *Conn) SyscallConn() (syscall.RawConn, error) { return c.rc, nil }

// NetConn is the TCP connection underneath.
func (c *Conn) NetConn() net.Conn { return c.tcp }

// opError words an error as net's own Read and Write do.
func (c *Conn) opError(op string, err error) error {
	if oe, ok := err.(*net.OpError); ok {
		err = oe.Err // syscall.RawConn's, which names its op "raw-read"
	}
	return &net.OpError{Op: op, Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}
