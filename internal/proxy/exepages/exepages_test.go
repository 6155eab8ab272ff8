package exepages

import (
	"crypto/sha256"
	"encoding/json"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
)

func TestMappingsKeepsReadOnlyPrivateOnes(t *testing.T) {
	maps := `00400000-00c00000 r-xp 00000000 fd:01 42 /usr/local/bin/isthmus-proxy
00c00000-01400000 r--p 00800000 fd:01 42 /usr/local/bin/isthmus-proxy
01400000-01500000 rw-p 01000000 fd:01 42 /usr/local/bin/isthmus-proxy
01500000-01600000 rw-p 00000000 00:00 0
01600000-01700000 r--s 00000000 fd:01 42 /usr/local/bin/isthmus-proxy
7f0000000000-7f0000100000 r-xp 00000000 fd:01 43 /usr/lib/other
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]
`
	ms, err := Mappings([]byte(maps), "/usr/local/bin/isthmus-proxy")
	if err != nil {
		t.Fatal(err)
	}
	want := []Mapping{{0x400000, 0xc00000}, {0xc00000, 0x1400000}}
	if len(ms) != len(want) || ms[0] != want[0] || ms[1] != want[1] {
		t.Fatalf("mappings %x, want %x", ms, want)
	}
	if _, err := Mappings([]byte("zz-yy r-xp 0 0:0 1 /x\n"), "/x"); err == nil {
		t.Fatal("a malformed range was accepted")
	}
}

// rssFile is the process's file-backed resident memory in kB.
func rssFile(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "RssFile:"); ok {
			n, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(rest), " kB"))
			return n
		}
	}
	t.Fatal("no RssFile in /proc/self/status")
	return 0
}

// Released pages stop counting, and the program runs on: code and
// read-only data it uses next read back as they were.
func TestReleaseKeepsTheProgramWhole(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("Linux only")
	}
	// Code and read-only data used again (hashing, JSON's reflection over
	// type data, a GC's stack walk over the symbol table) give what they
	// gave before.
	use := func() string {
		sum := sha256.Sum256([]byte("isthmus"))
		b, err := json.Marshal(map[string]any{"sum": sum[:4], "n": 1})
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	want := use()
	before := rssFile(t)
	n, err := Release()
	if err != nil {
		t.Fatal(err)
	}
	if n == 0 {
		t.Fatal("no mapping of the executable was found")
	}
	after := rssFile(t)
	if after >= before {
		t.Fatalf("RssFile %d kB before, %d kB after: nothing was released", before, after)
	}
	if got := use(); got != want {
		t.Fatalf("after release: %s, want %s", got, want)
	}
	runtime.GC()
	t.Logf("RssFile %d -> %d kB (released %d MB of address space)", before, after, n>>20)
}
