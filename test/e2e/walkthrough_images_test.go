package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/isthmus-mesh/isthmus/internal/image"
)

// builtDigests reads make image's digests.txt in dir: repository -> index digest.
func builtDigests(t *testing.T, dir string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "digests.txt"))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for line := range strings.Lines(string(b)) {
		ref, digest, ok := strings.Cut(strings.TrimSpace(line), "@")
		if !ok {
			continue
		}
		repo := ref[:strings.LastIndexByte(ref, ':')]
		out[repo] = digest
	}
	return out
}

// imagesArea checks that the mesh runs from the images make image built
// and the sandbox's registry served: istiod, the gateways, every sidecar
// and init container, and the demo app.
func imagesArea(t *testing.T, w *walkthrough) {
	digests := builtDigests(t, w.images)
	t.Run("every mesh pod runs the pulled image: its digest in the status, its root the unpacked image", func(t *testing.T) {
		hostRoot, err := os.Stat("/")
		if err != nil {
			t.Fatal(err)
		}
		checked := map[string]int{}
		for cluster, cs := range w.e.clients {
			for _, ns := range []string{"istio-system", "multicluster"} {
				pods, err := cs.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{})
				if err != nil {
					t.Fatal(err)
				}
				for _, p := range pods.Items {
					statuses := append(append([]corev1.ContainerStatus{}, p.Status.InitContainerStatuses...), p.Status.ContainerStatuses...)
					for _, s := range statuses {
						repo := s.Image // REPO[:TAG], the registry's port aside
						if i := strings.LastIndexByte(repo, ':'); i > strings.LastIndexByte(repo, '/') {
							repo = repo[:i]
						}
						repo = image.FullName(repo)
						where := cluster + " " + ns + "/" + p.Name + " " + s.Name
						if _, built := digests[repo]; !built {
							if name := filepath.Base(repo); name == "isthmus" || name == "demo-app" {
								t.Errorf("%s runs %s, not the image the walkthrough pushed to %s", where, s.Image, walkthroughHub)
							}
							continue // sleep's curl: a public image, run from the host
						}
						if want := repo + "@" + digests[repo]; s.ImageID != want {
							t.Errorf("%s: imageID %q, want %q", where, s.ImageID, want)
						}
						checked[filepath.Base(repo)]++
						if s.State.Running == nil {
							continue
						}
						pid, err := strconv.Atoi(strings.TrimPrefix(s.ContainerID, "isthmus://"))
						if err != nil {
							t.Errorf("%s: container ID %q", where, s.ContainerID)
							continue
						}
						root, err := os.Stat("/proc/" + strconv.Itoa(pid) + "/root/")
						if err != nil {
							t.Errorf("%s: %v", where, err)
							continue
						}
						if os.SameFile(root, hostRoot) || root.Sys().(*syscall.Stat_t).Dev == hostRoot.Sys().(*syscall.Stat_t).Dev {
							t.Errorf("%s: the process's root is the host's", where)
						}
						if _, err := os.Stat("/proc/" + strconv.Itoa(pid) + "/root/usr/local/bin/isthmus"); err != nil {
							t.Errorf("%s: no isthmus binary in the process's root: %v", where, err)
						}
						// Injected containers run the proxy alone (the injector's command).
						if s.Name == "istio-proxy" || s.Name == "istio-init" {
							cmdline, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
							if argv0, _, _ := strings.Cut(string(cmdline), "\x00"); argv0 != "/usr/local/bin/isthmus-proxy" {
								t.Errorf("%s runs %q, not the image's isthmus-proxy", where, argv0)
							}
						}
						if status, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status"); err == nil && strings.HasSuffix(repo, "/demo-app") && strings.Contains(string(status), "\nUid:\t1337\t") {
							t.Errorf("%s: the app runs as the proxy's uid 1337: its calls would leave uncaptured", where)
						}
						if _, err := os.Stat("/proc/" + strconv.Itoa(pid) + "/root/usr/sbin/iptables"); err == nil {
							t.Errorf("%s: the host's iptables is in the process's root", where)
						}
					}
				}
			}
		}
		// istiod, three gateways, six sidecars with their init containers,
		// five demo containers: at least that many.
		if checked["isthmus"] < 14 || checked["demo-app"] < 4 {
			t.Errorf("containers checked per image: %v", checked)
		}
		t.Logf("containers run from images: %v; digests %v", checked, digests)
	})
}
