package exepages

import (
	"fmt"
	"os"
	"syscall"
)

// Release drops the process's mappings of the executable's read-only
// pages and returns how many bytes of address space it went over. Pages
// in use map again on their next read; the rest stop counting in RSS.
func Release() (int64, error) {
	exe, err := executable()
	if err != nil {
		return 0, err
	}
	maps, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		return 0, err
	}
	ms, err := Mappings(maps, exe)
	if err != nil {
		return 0, err
	}
	var n int64
	for _, m := range ms {
		if _, _, errno := syscall.Syscall(syscall.SYS_MADVISE, m.Start, m.End-m.Start, syscall.MADV_DONTNEED); errno != 0 {
			return n, fmt.Errorf("madvise %#x-%#x: %w", m.Start, m.End, errno)
		}
		n += int64(m.End - m.Start)
	}
	return n, nil
}
