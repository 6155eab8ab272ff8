package rawtcp

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"
)

// pair is a connected loopback pair: a wrapped client and the raw server side.
func pair(t *testing.T) (*Conn, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s := (<-accepted).(*net.TCPConn)
	w, ok := Wrap(c).(*Conn)
	if !ok {
		t.Fatal("a TCP connection was not wrapped")
	}
	t.Cleanup(func() { w.Close(); s.Close() })
	return w, s
}

func TestReadWriteBothWays(t *testing.T) {
	c, s := pair(t)
	// More than the socket buffers hold, so writes wait in the poller.
	out := make([]byte, 16<<20)
	rand.Read(out)
	got := make(chan []byte)
	go func() {
		b, _ := io.ReadAll(s)
		got <- b
	}()
	if n, err := c.Write(out); err != nil || n != len(out) {
		t.Fatalf("Write = %d, %v; want %d, nil", n, err, len(out))
	}
	c.CloseWrite()
	if b := <-got; !bytes.Equal(b, out) {
		t.Fatalf("the peer read %d bytes, not the %d written", len(b), len(out))
	}
	go func() {
		s.Write(out)
		s.Close()
	}()
	in, err := io.ReadAll(c)
	if err != nil || !bytes.Equal(in, out) {
		t.Fatalf("ReadAll = %d bytes, %v; want the %d written", len(in), err, len(out))
	}
	// After the end, Read keeps saying so.
	if n, err := c.Read(make([]byte, 10)); n != 0 || err != io.EOF {
		t.Fatalf("Read after the end = %d, %v; want 0, EOF", n, err)
	}
}

func TestReadWaitsForData(t *testing.T) {
	c, s := pair(t)
	go func() {
		time.Sleep(50 * time.Millisecond)
		s.Write([]byte("late"))
	}()
	b := make([]byte, 10)
	n, err := c.Read(b)
	if err != nil || string(b[:n]) != "late" {
		t.Fatalf("Read = %q, %v", b[:n], err)
	}
}

func TestDeadlineCloseAndReset(t *testing.T) {
	c, _ := pair(t)
	c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	_, err := c.Read(make([]byte, 10))
	var ne net.Error
	if !errors.Is(err, os.ErrDeadlineExceeded) || !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("Read past its deadline: %v; want a timeout", err)
	}
	var oe *net.OpError
	if !errors.As(err, &oe) || oe.Op != "read" {
		t.Fatalf("Read past its deadline: %#v; want a net.OpError for read", err)
	}
	c.SetReadDeadline(time.Time{})

	// Close wakes a waiting Read.
	done := make(chan error)
	go func() {
		_, err := c.Read(make([]byte, 10))
		done <- err
	}()
	time.Sleep(20 * time.Millisecond)
	c.Close()
	if err := <-done; !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Read on a closed connection: %v; want net.ErrClosed", err)
	}

	// A reset is the system call's error, as net reports it.
	c2, s2 := pair(t)
	s2.SetLinger(0)
	s2.Close()
	time.Sleep(20 * time.Millisecond)
	if _, err := c2.Read(make([]byte, 10)); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("Read after a reset: %v; want ECONNRESET", err)
	}
}

func TestCopyKeepsBytes(t *testing.T) {
	// Two wrapped connections: io.Copy reads and writes, no splice.
	var c net.Conn = &Conn{}
	if _, ok := c.(io.ReaderFrom); ok {
		t.Fatal("Conn has ReadFrom: io.Copy would bypass its raw writes")
	}
	if _, ok := c.(io.WriterTo); ok {
		t.Fatal("Conn has WriteTo: io.Copy would bypass its raw reads")
	}
	a, aPeer := pair(t)
	b, bPeer := pair(t)
	payload := make([]byte, 1<<20)
	rand.Read(payload)
	go func() {
		aPeer.Write(payload)
		aPeer.Close()
	}()
	got := make(chan []byte)
	go func() {
		buf, _ := io.ReadAll(bPeer)
		got <- buf
	}()
	if n, err := io.Copy(b, a); err != nil || n != int64(len(payload)) {
		t.Fatalf("io.Copy between connections = %d, %v", n, err)
	}
	b.CloseWrite()
	if buf := <-got; !bytes.Equal(buf, payload) {
		t.Fatal("bytes copied between two connections differ")
	}

	// To and from something that is not a connection.
	c, cPeer := pair(t)
	go func() {
		cPeer.Write(payload)
		cPeer.Close()
	}()
	var sink bytes.Buffer
	if n, err := io.Copy(&sink, c); err != nil || !bytes.Equal(sink.Bytes(), payload) {
		t.Fatalf("io.Copy to a buffer = %d, %v", n, err)
	}
	d, dPeer := pair(t)
	go func() {
		buf, _ := io.ReadAll(dPeer)
		got <- buf
	}()
	if _, err := io.Copy(d, bytes.NewReader(payload)); err != nil {
		t.Fatal(err)
	}
	d.CloseWrite()
	if buf := <-got; !bytes.Equal(buf, payload) {
		t.Fatal("bytes copied from a reader differ")
	}
}

func TestWrapLeavesOtherConnections(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if Wrap(a) != a {
		t.Fatal("a connection that is not TCP was wrapped")
	}
}

// A read or write on the hot path allocates nothing.
func TestNoAllocationPerCall(t *testing.T) {
	if raceEnabled {
		t.Skip("race builds use syscall.Read and syscall.Write")
	}
	c, s := pair(t)
	in, out := make([]byte, 64), []byte("ping")
	allocs := testing.AllocsPerRun(200, func() {
		if _, err := c.Write(out); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(s, in[:len(out)]); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Write(out); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, in[:len(out)]); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per write and read, want 0", allocs)
	}
}
