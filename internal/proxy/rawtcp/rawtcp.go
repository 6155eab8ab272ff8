// Package rawtcp reads and writes TCP connections with raw system calls.
//
// Go's net package makes each read and write through syscall.Syscall, which
// tells the scheduler that the thread may block: the call wakes the
// runtime's monitor thread if it sleeps (a futex), keeps it polling every
// 20 µs, and lets it hand the thread's P to another thread when a call
// lasts over 20 µs, which a write often does, because the kernel delivers
// the packet to a local receiver inside the write. A proxy's sockets are
// non-blocking, so a read or write never blocks and those costs buy
// nothing: through two sidecars at full speed they were 40% of the
// context switches per HTTP request and about a tenth of the CPU
// (BENCHMARKS.md, "Reading the goals"). Waiting is unchanged: a call that would block waits in
// Go's poller, deadlines and Close included, through syscall.RawConn.
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

// Conn is a *net.TCPConn whose Read and Write are raw system calls; every
// other method is the TCPConn's.
type Conn struct {
	*net.TCPConn
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
	w := &Conn{TCPConn: tc, rc: rc}
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

// ReadFrom copies r into the connection; between two TCP connections the
// kernel splices, as for a plain *net.TCPConn.
func (c *Conn) ReadFrom(r io.Reader) (int64, error) {
	if rc, ok := r.(*Conn); ok {
		r = rc.TCPConn
	}
	if _, ok := r.(*net.TCPConn); ok {
		return c.TCPConn.ReadFrom(r)
	}
	return io.Copy(onlyWriter{c}, r)
}

// WriteTo copies the connection into w, spliced when w is TCP too.
func (c *Conn) WriteTo(w io.Writer) (int64, error) {
	if wc, ok := w.(*Conn); ok {
		w = wc.TCPConn
	}
	if tc, ok := w.(*net.TCPConn); ok {
		return tc.ReadFrom(c.TCPConn)
	}
	return io.Copy(w, onlyReader{c})
}

// NetConn is the TCP connection underneath.
func (c *Conn) NetConn() net.Conn { return c.TCPConn }

// onlyReader and onlyWriter hide ReadFrom and WriteTo from io.Copy.
type onlyReader struct{ io.Reader }
type onlyWriter struct{ io.Writer }

// opError words an error as net's own Read and Write do.
func (c *Conn) opError(op string, err error) error {
	if oe, ok := err.(*net.OpError); ok {
		err = oe.Err // syscall.RawConn's, which names its op "raw-read"
	}
	return &net.OpError{Op: op, Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}
