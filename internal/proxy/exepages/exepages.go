// Package exepages gives back the executable's read-only pages that only
// start-up needed. Every package's init (protobuf descriptors and type
// registrations above all) touches pages of the binary that a running
// proxy never reads again, and they stay counted in its RSS, which is what
// kubectl top and a pod's memory accounting show. Dropping the mappings of
// the file-backed, read-only segments (code, read-only data, the symbol
// table) after start-up leaves them in the page cache: a page still in use
// maps again on its next read (a minor fault), and only those count from
// then on.
package exepages

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Mapping is one read-only mapping of the executable.
type Mapping struct {
	Start, End uintptr
}

// Mappings lists the read-only mappings of the executable at exe in maps
// (the text of /proc/self/maps). Writable ones are left out: their
// written pages are the process's own, and dropping them would lose them.
func Mappings(maps []byte, exe string) ([]Mapping, error) {
	var out []Mapping
	sc := bufio.NewScanner(bytes.NewReader(maps))
	for sc.Scan() {
		// address perms offset dev inode path
		f := strings.Fields(sc.Text())
		if len(f) < 6 || strings.Join(f[5:], " ") != exe {
			continue
		}
		if len(f[1]) < 4 || f[1][1] != '-' || f[1][3] != 'p' {
			continue // writable, or shared
		}
		lo, hi, ok := strings.Cut(f[0], "-")
		if !ok {
			return nil, fmt.Errorf("maps line %q: no address range", sc.Text())
		}
		start, err := strconv.ParseUint(lo, 16, 64)
		if err != nil {
			return nil, fmt.Errorf("maps line %q: %w", sc.Text(), err)
		}
		end, err := strconv.ParseUint(hi, 16, 64)
		if err != nil || end <= start {
			return nil, fmt.Errorf("maps line %q: bad address range", sc.Text())
		}
		out = append(out, Mapping{Start: uintptr(start), End: uintptr(end)})
	}
	return out, sc.Err()
}

// executable is the path /proc/self/maps names the running binary by.
func executable() (string, error) {
	return os.Readlink("/proc/self/exe")
}
