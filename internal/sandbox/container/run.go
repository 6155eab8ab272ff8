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
	for _, m := range s.Mounts {
		if err := bind(m); err != nil {
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
