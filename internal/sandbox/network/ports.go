package network

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// ErrPortInUse is returned by CheckPort when something already listens.
var ErrPortInUse = errors.New("port in use")

// CheckPort reports whether a TCP port can be bound on every address inside
// the named namespace. When it cannot, the error names the port and, when it
// can be found, the process holding it.
func CheckPort(ns string, port int) error {
	err := Do(ns, func() error {
		l, err := net.Listen("tcp", ":"+strconv.Itoa(port))
		if err != nil {
			return err
		}
		return l.Close()
	})
	if err == nil {
		return nil
	}
	if !errors.Is(err, syscall.EADDRINUSE) {
		return fmt.Errorf("check port %d in %s: %w", port, ns, err)
	}
	holder := ""
	if pid := listenerPID(ns, port); pid > 0 {
		holder = fmt.Sprintf(" by pid %d (%s)", pid, cmdline(pid))
	}
	return fmt.Errorf("%w: port %d in network namespace %s is already taken%s", ErrPortInUse, port, ns, holder)
}

// listenerPID finds the process with a listening socket on port in ns, or 0.
func listenerPID(ns string, port int) int {
	var inodes []string
	_ = Do(ns, func() error {
		for _, f := range []string{"/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"} {
			b, err := os.ReadFile(f)
			if err != nil {
				continue
			}
			for _, line := range strings.Split(string(b), "\n")[1:] {
				fields := strings.Fields(line)
				if len(fields) < 10 || fields[3] != "0A" { // 0A = LISTEN
					continue
				}
				local := fields[1]
				i := strings.LastIndexByte(local, ':')
				p, err := strconv.ParseInt(local[i+1:], 16, 32)
				if err == nil && int(p) == port {
					inodes = append(inodes, fields[9])
				}
			}
		}
		return nil
	})
	if len(inodes) == 0 {
		return 0
	}
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		fds, _ := os.ReadDir(filepath.Join("/proc", p.Name(), "fd"))
		for _, fd := range fds {
			target, err := os.Readlink(filepath.Join("/proc", p.Name(), "fd", fd.Name()))
			if err != nil {
				continue
			}
			for _, ino := range inodes {
				if target == "socket:["+ino+"]" {
					return pid
				}
			}
		}
	}
	return 0
}

func cmdline(pid int) string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(strings.ReplaceAll(string(b), "\x00", " "))
}
