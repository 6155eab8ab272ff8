//go:build race

package rawtcp

import "syscall"

// Under the race detector reads and writes go through syscall.Read and
// syscall.Write, which tell it that what one goroutine did before writing
// to a socket happened before another goroutine read it (as net's do).
// Without that, every test that changes something and then sends a
// request about it would be reported as a race.

func sysRead(fd uintptr, b []byte) (int, syscall.Errno) {
	n, err := syscall.Read(int(fd), b)
	return n, errnoOf(err)
}

func sysWrite(fd uintptr, b []byte) (int, syscall.Errno) {
	n, err := syscall.Write(int(fd), b)
	return n, errnoOf(err)
}

func errnoOf(err error) syscall.Errno {
	if err == nil {
		return 0
	}
	if e, ok := err.(syscall.Errno); ok {
		return e
	}
	return syscall.EIO
}
