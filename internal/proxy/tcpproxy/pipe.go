// Package tcpproxy copies bytes both ways between two connections, with
// half-close, and counts them. Bytes pass through a 16 KiB buffer per
// direction (nginx's stream proxy_buffer_size), taken from a pool while the
// copy lasts; the proxy's connections read and write with raw system calls
// (rawtcp), which for request-and-answer traffic costs less than splice(2).
package tcpproxy

import (
	"io"
	"net"
	"sync"
)

// closeWriter is a connection that can half-close (TCP, TLS).
type closeWriter interface{ CloseWrite() error }

// Pipe copies until both directions end and closes both connections. It
// returns the bytes sent upstream (down->up) and received (up->down).
func Pipe(down, up net.Conn) (sent, received int64) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		received = copyHalf(down, up)
	}()
	sent = copyHalf(up, down)
	wg.Wait()
	down.Close()
	up.Close()
	return sent, received
}

// buffers hold the bytes in flight of one direction.
var buffers = sync.Pool{New: func() any { return new([16 << 10]byte) }}

func copyHalf(dst, src net.Conn) int64 {
	buf := buffers.Get().(*[16 << 10]byte)
	defer buffers.Put(buf)
	n, _ := io.CopyBuffer(dst, src, buf[:])
	if cw, ok := dst.(closeWriter); ok {
		_ = cw.CloseWrite()
	} else {
		_ = dst.Close()
	}
	return n
}
