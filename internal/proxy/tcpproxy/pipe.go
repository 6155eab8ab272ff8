// Package tcpproxy copies bytes both ways between two connections, with
// half-close, and counts them. Between two plain TCP sockets the kernel
// splices (io.Copy uses splice(2)), so no byte passes through user space.
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

func copyHalf(dst, src net.Conn) int64 {
	n, _ := io.Copy(dst, src)
	if cw, ok := dst.(closeWriter); ok {
		_ = cw.CloseWrite()
	} else {
		_ = dst.Close()
	}
	return n
}
