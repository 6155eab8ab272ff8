// Package tcpproxy copies bytes both ways between two connections, with
// half-close, and counts them. Bytes pass through a 16 KiB buffer per
// direction (nginx's stream proxy_buffer_size), taken from a pool while the
// copy lasts; the proxy's connections read and write with raw system calls
// (rawtcp), which for request-and-answer traffic costs less than splice(2).
package tcpproxy

import (
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// closeWriter is a connection that can half-close (TCP, TLS).
type closeWriter interface{ CloseWrite() error }

// Pipe copies until both directions end and closes both connections. A
// relay that carries no byte either way for idle (if positive) is closed.
// It returns the bytes sent upstream (down->up) and received (up->down).
func Pipe(down, up net.Conn, idle time.Duration) (sent, received int64) {
	var last atomic.Int64 // when a direction last read, in nanoseconds
	last.Store(time.Now().UnixNano())
	if idle > 0 {
		// One timer per relay, looking again when it fires rather than
		// being pushed back on every read.
		var t *time.Timer
		var mu sync.Mutex
		t = time.AfterFunc(idle, func() {
			quiet := time.Since(time.Unix(0, last.Load()))
			if quiet >= idle {
				down.Close()
				up.Close()
				return
			}
			mu.Lock()
			t.Reset(idle - quiet)
			mu.Unlock()
		})
		defer func() { mu.Lock(); t.Stop(); mu.Unlock() }()
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		received = copyHalf(down, up, &last, idle > 0)
	}()
	sent = copyHalf(up, down, &last, idle > 0)
	wg.Wait()
	down.Close()
	up.Close()
	return sent, received
}

// buffers hold the bytes in flight of one direction.
var buffers = sync.Pool{New: func() any { return new([16 << 10]byte) }}

func copyHalf(dst, src net.Conn, last *atomic.Int64, track bool) int64 {
	buf := buffers.Get().(*[16 << 10]byte)
	defer buffers.Put(buf)
	var n int64
	for {
		r, err := src.Read(buf[:])
		if r > 0 {
			if track {
				last.Store(time.Now().UnixNano())
			}
			w, werr := dst.Write(buf[:r])
			n += int64(w)
			if werr != nil {
				break
			}
		}
		if err != nil {
			break
		}
	}
	if cw, ok := dst.(closeWriter); ok {
		_ = cw.CloseWrite()
	} else {
		_ = dst.Close()
	}
	return n
}
