package container

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/isthmus-mesh/isthmus/internal/sandbox/network"
)

// Mount places a host path at a path inside the container.
type Mount struct {
	Source   string `json:"source"`
	Target   string `json:"target"`
	ReadOnly bool   `json:"readOnly,omitempty"`
}

// Spec is what the in-namespace helper needs to become the container.
type Spec struct {
	Argv     []string `json:"argv"`
	Env      []string `json:"env"`
	Dir      string   `json:"dir,omitempty"`
	UID      uint32   `json:"uid"`
	GID      uint32   `json:"gid"`
	Hostname string   `json:"hostname"`
	Mounts   []Mount  `json:"mounts"`
	// Root, when set, is the container's own root filesystem; without it
	// the container sees the host's (a host program standing in for an
	// image that cannot be pulled here).
	Root *Rootfs `json:"root,omitempty"`
}

// Rootfs is an image's layers stacked by overlayfs under a writable layer
// that starts empty at every start of the container, as a container's does.
type Rootfs struct {
	// Layers are unpacked layer directories, bottom first.
	Layers []string `json:"layers"`
	// Dir holds the writable layer, overlayfs's work directory and the mount point.
	Dir string `json:"dir"`
}

// Start launches the container process in the pod's network namespace, in
// new mount and UTS namespaces, through `isthmus sandbox container-run`,
// which applies the spec and then execs the container's program (so the
// returned process is the container's). Output goes to log.
func Start(self, podNS, specFile string, spec Spec, log *os.File) (*exec.Cmd, error) {
	b, err := json.Marshal(spec)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(specFile, b, 0o600); err != nil {
		return nil, fmt.Errorf("write container spec: %w", err)
	}
	cmd := exec.Command(self, "sandbox", "container-run", specFile)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.Env = []string{}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		// The runtime makes mounts of a new mount namespace private before exec.
		Unshareflags: syscall.CLONE_NEWNS | syscall.CLONE_NEWUTS,
		Setpgid:      true,
	}
	if err := network.Do(podNS, cmd.Start); err != nil {
		return nil, fmt.Errorf("start container: %w", err)
	}
	return cmd, nil
}

// Become is the helper's side: called in the container's fresh mount and UTS
// namespaces, it mounts the volumes, sets the hostname, drops to the
// container's user and execs its program. It returns only on failure.
func Become(specFile string) error {
	b, err := os.ReadFile(specFile)
	if err != nil {
		return fmt.Errorf("read container spec: %w", err)
	}
	var s Spec
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("parse container spec: %w", err)
	}
	if s.Hostname != "" {
		if err := syscall.Sethostname([]byte(s.Hostname)); err != nil {
			return fmt.Errorf("set hostname: %w", err)
		}
	}
	root := "/"
	if s.Root != nil {
		var err error
		if root, err = s.Root.mount(); err != nil {
			return err
		}
	}
	for _, m := range s.Mounts {
		m.Target = filepath.Join(root, m.Target)
		if err := bind(m); err != nil {
			return err
		}
	}
	if s.Root != nil {
		if err := pivot(root); err != nil {
			return err
		}
	}
	path, err := lookPath(s.Argv[0], s.Env)
	if err != nil {
		return err
	}
	if s.Dir != "" {
		if err := os.MkdirAll(s.Dir, 0o755); err != nil {
			return fmt.Errorf("working directory: %w", err)
		}
		if err := os.Chdir(s.Dir); err != nil {
			return fmt.Errorf("working directory: %w", err)
		}
	}
	if s.GID != 0 || s.UID != 0 {
		if err := syscall.Setgroups([]int{int(s.GID)}); err != nil {
			return fmt.Errorf("setgroups: %w", err)
		}
		if err := syscall.Setgid(int(s.GID)); err != nil {
			return fmt.Errorf("setgid %d: %w", s.GID, err)
		}
		if err := syscall.Setuid(int(s.UID)); err != nil {
			return fmt.Errorf("setuid %d: %w", s.UID, err)
		}
	}
	return syscall.Exec(path, s.Argv, s.Env)
}

// mount stacks the layers at Dir/rootfs with /proc, a minimal /dev and a
// read-only /sys, and returns the mount point.
func (r *Rootfs) mount() (string, error) {
	upper, work, merged := filepath.Join(r.Dir, "upper"), filepath.Join(r.Dir, "work"), filepath.Join(r.Dir, "rootfs")
	// A restarted container starts from the image again.
	for _, d := range []string{upper, work} {
		if err := os.RemoveAll(d); err != nil {
			return "", err
		}
	}
	for _, d := range []string{upper, work, merged} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return "", err
		}
	}
	lower := make([]string, len(r.Layers))
	for i, l := range r.Layers {
		lower[len(r.Layers)-1-i] = l // overlayfs lists the top layer first
	}
	opts := "lowerdir=" + strings.Join(lower, ":") + ",upperdir=" + upper + ",workdir=" + work
	if err := syscall.Mount("overlay", merged, "overlay", 0, opts); err != nil {
		return "", fmt.Errorf("mount the image's layers: %w", err)
	}
	mounts := []struct {
		target, fstype, data string
		flags                uintptr
	}{
		{"proc", "proc", "", syscall.MS_NOSUID | syscall.MS_NODEV | syscall.MS_NOEXEC},
		{"dev", "tmpfs", "mode=755,size=65536k", syscall.MS_NOSUID | syscall.MS_STRICTATIME},
		{"dev/shm", "tmpfs", "mode=1777,size=65536k", syscall.MS_NOSUID | syscall.MS_NODEV | syscall.MS_NOEXEC},
		{"sys", "sysfs", "", syscall.MS_NOSUID | syscall.MS_NODEV | syscall.MS_NOEXEC | syscall.MS_RDONLY},
	}
	for _, m := range mounts {
		target := filepath.Join(merged, m.target)
		if err := os.MkdirAll(target, 0o755); err != nil {
			return "", err
		}
		if err := syscall.Mount(m.fstype, target, m.fstype, m.flags, m.data); err != nil {
			return "", fmt.Errorf("mount %s in the container: %w", m.target, err)
		}
	}
	for _, dev := range []string{"null", "zero", "full", "random", "urandom", "tty"} {
		if err := bind(Mount{Source: "/dev/" + dev, Target: filepath.Join(merged, "dev", dev)}); err != nil {
			return "", err
		}
	}
	for link, target := range map[string]string{"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1", "stderr": "/proc/self/fd/2"} {
		if err := os.Symlink(target, filepath.Join(merged, "dev", link)); err != nil {
			return "", err
		}
	}
	return merged, nil
}

// pivot makes root the process's root and detaches the host's (runc's
// pivot_root(".", ".") way, which needs no directory for the old root).
func pivot(root string) error {
	old, err := syscall.Open("/", syscall.O_DIRECTORY|syscall.O_RDONLY, 0)
	if err != nil {
		return err
	}
	defer syscall.Close(old)
	if err := syscall.Chdir(root); err != nil {
		return err
	}
	if err := syscall.PivotRoot(".", "."); err != nil {
		return fmt.Errorf("pivot_root into the image: %w", err)
	}
	if err := syscall.Fchdir(old); err != nil {
		return err
	}
	// The old root's mounts must not propagate their unmount to the host.
	if err := syscall.Mount("", ".", "", syscall.MS_SLAVE|syscall.MS_REC, ""); err != nil {
		return err
	}
	if err := syscall.Unmount(".", syscall.MNT_DETACH); err != nil {
		return fmt.Errorf("detach the host's root: %w", err)
	}
	return syscall.Chdir("/")
}

func bind(m Mount) error {
	fi, err := os.Stat(m.Source)
	if err != nil {
		return fmt.Errorf("volume source %s: %w", m.Source, err)
	}
	if fi.IsDir() {
		err = os.MkdirAll(m.Target, 0o755)
	} else {
		if err = os.MkdirAll(filepath.Dir(m.Target), 0o755); err == nil {
			var f *os.File
			if f, err = os.OpenFile(m.Target, os.O_CREATE|os.O_RDONLY, 0o644); err == nil {
				f.Close()
			}
		}
	}
	if err != nil {
		return fmt.Errorf("mount point %s: %w", m.Target, err)
	}
	if err := syscall.Mount(m.Source, m.Target, "", syscall.MS_BIND|syscall.MS_REC, ""); err != nil {
		return fmt.Errorf("mount %s at %s: %w", m.Source, m.Target, err)
	}
	if m.ReadOnly {
		if err := syscall.Mount("", m.Target, "", syscall.MS_BIND|syscall.MS_REMOUNT|syscall.MS_RDONLY|syscall.MS_REC, ""); err != nil {
			return fmt.Errorf("make %s read-only: %w", m.Target, err)
		}
	}
	return nil
}

// lookPath resolves argv[0] with the container's PATH.
func lookPath(name string, env []string) (string, error) {
	if strings.Contains(name, "/") {
		return name, nil
	}
	path := "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	for _, e := range env {
		if v, ok := strings.CutPrefix(e, "PATH="); ok {
			path = v
		}
	}
	for _, dir := range filepath.SplitList(path) {
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", errors.New("executable " + name + " not found in PATH " + path)
}
