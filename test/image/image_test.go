// Package image runs `make image` as a release would and checks what it
// wrote with the tools users push images with.
package image

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// crane is go-containerregistry's CLI at the version go.mod pins, run from
// the module proxy as a user would install it.
const crane = "github.com/google/go-containerregistry/cmd/crane@v0.22.1"

func makeImage(t *testing.T, dir string) string {
	t.Helper()
	cmd := exec.Command("make", "-C", "../..", "image", "IMAGE_DIR="+dir, "TAG=test")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("make image: %v\n%s", err, out)
	}
	digests, err := os.ReadFile(filepath.Join(dir, "digests.txt"))
	if err != nil {
		t.Fatal(err)
	}
	return string(digests)
}

// Two runs of make image give the same digests; the index holds both
// platforms, each with its own architecture's binaries (isthmus and
// isthmus-proxy); crane pushes the
// per-image layout with both platforms under the same digest.
func TestMakeImage(t *testing.T) {
	if testing.Short() {
		t.Skip("cross-builds isthmus twice")
	}
	first, second := t.TempDir(), t.TempDir()
	a, b := makeImage(t, first), makeImage(t, second)
	if a != b {
		t.Fatalf("two runs of make image on one tree:\n%s\n%s", a, b)
	}
	if !strings.Contains(a, "docker.io/isthmus/isthmus:test@sha256:") || !strings.Contains(a, "docker.io/isthmus/demo-app:test@sha256:") {
		t.Fatalf("digests.txt: %s", a)
	}

	idx, err := layout.ImageIndexFromPath(filepath.Join(first, "isthmus"))
	if err != nil {
		t.Fatal(err)
	}
	top, _ := idx.IndexManifest()
	if len(top.Manifests) != 1 {
		t.Fatalf("the isthmus layout has %d entries, want its one index", len(top.Manifests))
	}
	images, err := idx.ImageIndex(top.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	im, _ := images.IndexManifest()
	machines := map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}
	for _, m := range im.Manifests {
		img, err := images.Image(m.Digest)
		if err != nil {
			t.Fatal(err)
		}
		for _, path := range []string{"usr/local/bin/isthmus", "usr/local/bin/isthmus-proxy"} {
			bin := fileOf(t, img, path)
			f, err := elf.NewFile(bytes.NewReader(bin))
			if err != nil {
				t.Fatalf("%s: /%s is not ELF: %v", m.Platform, path, err)
			}
			if want := machines[m.Platform.Architecture]; f.Machine != want || m.Platform.OS != "linux" {
				t.Errorf("%s image holds a %s /%s, want %s", m.Platform, f.Machine, path, want)
			}
		}
		delete(machines, m.Platform.Architecture)
	}
	if len(machines) != 0 {
		t.Errorf("platforms missing from the index: %v", machines)
	}

	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	push := exec.Command("go", "run", crane, "push", "--insecure", filepath.Join(first, "isthmus"), host+"/mesh/isthmus:test")
	if out, err := push.CombinedOutput(); err != nil {
		t.Fatalf("crane push: %v\n%s", err, out)
	}
	ref, _ := name.ParseReference(host+"/mesh/isthmus:test", name.Insecure)
	pushed, err := remote.Index(ref)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := images.Digest()
	if got, _ := pushed.Digest(); got != want || !strings.Contains(a, want.String()) {
		t.Errorf("crane pushed %s, make image built %s", got, want)
	}
}

func fileOf(t *testing.T, img v1.Image, path string) []byte {
	t.Helper()
	rc := mutate.Extract(img)
	defer rc.Close()
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err != nil {
			t.Fatalf("%s not in the image: %v", path, err)
		}
		if h.Name == path {
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			return b
		}
	}
}
