package container

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The test binary stands in for isthmus: Start runs it as
// `SELF sandbox container-run SPEC`.
func TestMain(m *testing.M) {
	if len(os.Args) == 4 && os.Args[1] == "sandbox" && os.Args[2] == "container-run" {
		if err := Become(os.Args[3]); err != nil {
			fmt.Fprintln(os.Stderr, "container-run:", err)
			os.Exit(1)
		}
	}
	os.Exit(m.Run())
}

// probe is the container's program: it reports what it sees as its root.
const probe = `package main

import (
	"fmt"
	"os"
)

func main() {
	marker, _ := os.ReadFile("/etc/marker")
	volume, _ := os.ReadFile("/data/v")
	_, hostErr := os.Stat(os.Args[1])
	wd, _ := os.Getwd()
	self, _ := os.Readlink("/proc/self/exe")
	_, devErr := os.Stat("/dev/null")
	os.WriteFile("/etc/written", []byte("x"), 0o644)
	fmt.Printf("marker=%s volume=%s host-visible=%v wd=%s exe=%s uid=%d dev-null=%v\n", marker, volume, hostErr == nil, wd, self, os.Getuid(), devErr == nil)
}
`

// A container with an image root sees the image's files and its volumes,
// not the host's, in its own directory and user; a restart starts from the
// image again.
func TestImageRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: mount namespaces, overlayfs, pivot_root")
	}
	if testing.Short() {
		t.Skip("builds a program")
	}
	dir := t.TempDir()
	layer := filepath.Join(dir, "layer")
	if err := os.MkdirAll(filepath.Join(layer, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(layer, "etc/marker"), []byte("from-the-image"), 0o644)
	src := filepath.Join(dir, "probe.go")
	os.WriteFile(src, []byte(probe), 0o644)
	build := exec.Command("go", "build", "-o", filepath.Join(layer, "bin/probe"), src)
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the probe: %v\n%s", err, out)
	}
	vol := filepath.Join(dir, "vol")
	os.MkdirAll(vol, 0o755)
	os.WriteFile(filepath.Join(vol, "v"), []byte("from-the-volume"), 0o644)
	ns := fmt.Sprintf("isthmus-ctrtest-%d", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v %s", err, out)
	}
	defer exec.Command("ip", "netns", "del", ns).Run()

	hostOnly := dir // exists on the host, not in the image
	for run := range 2 {
		logPath := filepath.Join(dir, fmt.Sprintf("log%d", run))
		log, _ := os.Create(logPath)
		spec := Spec{
			Argv:     []string{"/bin/probe", hostOnly},
			Env:      []string{"PATH=/bin"},
			Dir:      "/work",
			UID:      1337,
			GID:      1337,
			Hostname: "probe",
			Mounts:   []Mount{{Source: vol, Target: "/data", ReadOnly: true}},
			Root:     &Rootfs{Layers: []string{layer}, Dir: filepath.Join(dir, "ctr")},
		}
		if run == 1 {
			spec.UID, spec.GID = 0, 0 // the second run writes /etc/written as root
		}
		cmd, err := Start(os.Args[0], ns, filepath.Join(dir, "spec.json"), spec, log)
		log.Close()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Wait()
		out, _ := os.ReadFile(logPath)
		got := strings.TrimSpace(string(out))
		want := "marker=from-the-image volume=from-the-volume host-visible=false wd=/work exe=/bin/probe"
		if !strings.HasPrefix(got, want) || !strings.Contains(got, "dev-null=true") {
			t.Errorf("run %d: %s\nwant prefix %s", run, got, want)
		}
		if run == 0 && !strings.Contains(got, "uid=1337") {
			t.Errorf("run as %s, want uid 1337", got)
		}
		if _, err := os.Stat(filepath.Join(layer, "etc/written")); err == nil {
			t.Error("the container wrote into the image's layer")
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "ctr/upper/etc/written")); err != nil {
		t.Errorf("the writable layer of the last run: %v", err)
	}
}
