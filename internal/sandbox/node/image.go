package node

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/isthmus-mesh/isthmus/internal/sandbox/container"
	"github.com/isthmus-mesh/isthmus/internal/sandbox/images"
)

// runnable is what a container runs: from its pulled image, or a program of
// this machine standing in for a public image the sandbox cannot pull.
type runnable struct {
	argv    []string
	env     []string // the image's, under the container's
	dir     string
	user    string // the image's USER, for a container that names none
	root    *container.Rootfs
	imageID string
}

// resolveImage pulls the container's image as its pull policy says and
// reports the kubelet's events; a public image absent from the sandbox's
// registry falls back to the host program the sandbox maps it to.
func (c *ctr) resolveImage(ctx context.Context) (*runnable, error) {
	ref := c.spec.Image
	a := c.w.a
	pod := c.w.snapshot()
	policy := c.spec.ImagePullPolicy
	always, never := policy == corev1.PullAlways, policy == corev1.PullNever
	if a.images == nil {
		return c.hostProcess("")
	}
	var img *images.Image
	if !always {
		img, _ = a.images.Present(ref)
	}
	if img == nil && never {
		msg := fmt.Sprintf("Container image %q is not present with pull policy of Never", ref)
		a.event(pod, corev1.EventTypeWarning, "ErrImageNeverPull", msg)
		c.setWaiting("ErrImageNeverPull", msg)
		return nil, errors.New(msg)
	}
	pulled := img == nil
	var err error
	start := time.Now()
	if pulled {
		a.event(pod, corev1.EventTypeNormal, "Pulling", fmt.Sprintf("Pulling image %q", ref))
		img, err = a.images.Pull(ctx, ref)
	}
	if err != nil {
		if p, herr := c.hostProcess(err.Error()); herr == nil {
			return p, nil
		}
		msg := fmt.Sprintf("Failed to pull image %q: %v", ref, err)
		if errors.Is(err, images.ErrNotFound) {
			msg += "; the sandbox pulls from its own registry only (push with `isthmus sandbox load`), and runs these public images as programs of this machine: " + strings.Join(container.KnownImages(), ", ")
		}
		a.event(pod, corev1.EventTypeWarning, "Failed", msg)
		a.event(pod, corev1.EventTypeWarning, "Failed", "Error: ErrImagePull")
		c.pullFailed(msg)
		return nil, err
	}
	if pulled {
		a.event(pod, corev1.EventTypeNormal, "Pulled", fmt.Sprintf("Successfully pulled image %q in %s. Image size: %d bytes.", ref, time.Since(start).Round(time.Millisecond), img.Size))
	} else {
		a.event(pod, corev1.EventTypeNormal, "Pulled", fmt.Sprintf("Container image %q already present on machine", ref))
	}
	argv, err := container.Argv(img.Config.Entrypoint, img.Config.Cmd, c.spec.Command, c.spec.Args)
	if err != nil {
		return nil, fmt.Errorf("image %q: %w", ref, err)
	}
	dir := c.spec.WorkingDir
	if dir == "" {
		dir = img.Config.WorkingDir
	}
	return &runnable{
		argv:    argv,
		env:     img.Config.Env,
		dir:     dir,
		user:    img.Config.User,
		root:    &container.Rootfs{Layers: img.Layers, Dir: filepath.Join(c.w.dir, "containers", c.spec.Name)},
		imageID: img.ID,
	}, nil
}

// hostProcess maps the image onto a program of this machine, saying so on
// the pod; why is the pull's failure, if there was one.
func (c *ctr) hostProcess(why string) (*runnable, error) {
	argv, err := container.Command(c.spec.Image, c.spec.Command, c.spec.Args)
	if err != nil {
		return nil, err
	}
	if why != "" {
		c.w.a.event(c.w.snapshot(), corev1.EventTypeNormal, "HostProgram",
			fmt.Sprintf("Image %q cannot be pulled in the sandbox (%s); running this machine's %s in its place", c.spec.Image, why, filepath.Base(argv[0])))
	}
	return &runnable{argv: argv, dir: c.spec.WorkingDir, imageID: "isthmus-sandbox-host://" + c.spec.Image}, nil
}

// pullFailed records ErrImagePull now and ImagePullBackOff for the wait
// before the next attempt, as the kubelet shows them.
func (c *ctr) pullFailed(msg string) {
	c.setWaiting("ErrImagePull", msg)
	go func() {
		time.Sleep(2 * time.Second)
		c.mu.Lock()
		still := c.state.Waiting != nil && c.state.Waiting.Reason == "ErrImagePull"
		if still {
			c.state.Waiting = &corev1.ContainerStateWaiting{Reason: "ImagePullBackOff", Message: fmt.Sprintf("Back-off pulling image %q", c.spec.Image)}
		}
		c.mu.Unlock()
		if still {
			c.w.markChanged()
			c.w.a.event(c.w.snapshot(), corev1.EventTypeNormal, "BackOff", fmt.Sprintf("Back-off pulling image %q", c.spec.Image))
		}
	}()
}

// imageUser resolves an image's USER ("1337", "1337:1337", "name[:group]")
// against the image's own /etc/passwd and /etc/group.
func imageUser(user string, layers []string) (uid, gid uint32, err error) {
	if user == "" {
		return 0, 0, nil
	}
	u, g, hasGroup := strings.Cut(user, ":")
	lookup := func(file, name string, field int) (uint32, error) {
		if n, err := strconv.ParseUint(name, 10, 32); err == nil {
			return uint32(n), nil
		}
		for i := len(layers) - 1; i >= 0; i-- {
			b, err := os.ReadFile(filepath.Join(layers[i], file))
			if err != nil {
				continue
			}
			for line := range strings.Lines(string(b)) {
				f := strings.Split(strings.TrimSpace(line), ":")
				if len(f) > field && f[0] == name {
					n, err := strconv.ParseUint(f[field], 10, 32)
					return uint32(n), err
				}
			}
		}
		return 0, fmt.Errorf("user %q of the image is not in its /%s", name, file)
	}
	if uid, err = lookup("etc/passwd", u, 2); err != nil {
		return 0, 0, err
	}
	gid = uid
	if hasGroup {
		gid, err = lookup("etc/group", g, 2)
	} else if _, numeric := strconv.ParseUint(u, 10, 32); numeric != nil {
		gid, err = lookup("etc/passwd", u, 3)
	}
	return uid, gid, err
}
