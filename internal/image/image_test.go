package image

import (
	"archive/tar"
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

func testBinaries(t *testing.T) map[string]Binaries {
	dir := t.TempDir()
	bins := map[string]Binaries{}
	for _, p := range []string{"linux/arm64", "linux/amd64"} {
		var b Binaries
		for _, f := range []struct {
			name string
			path *string
		}{{"isthmus", &b.Isthmus}, {"isthmus-proxy", &b.Proxy}} {
			*f.path = filepath.Join(dir, strings.ReplaceAll(p, "/", "-")+"-"+f.name)
			if err := os.WriteFile(*f.path, []byte(f.name+" for "+p), 0o755); err != nil {
				t.Fatal(err)
			}
		}
		bins[p] = b
	}
	return bins
}

func testSpec(t *testing.T) Spec {
	return Mesh("isthmus", "1.2.3", "1.2.3", "abc", testBinaries(t), time.Unix(1764900000, 0))[0]
}

func TestBuildIsReproducibleAndComplete(t *testing.T) {
	s := testSpec(t)
	a, err := Build(s)
	if err != nil {
		t.Fatal(err)
	}
	b, err := Build(s)
	if err != nil {
		t.Fatal(err)
	}
	da, _ := a.Digest()
	db, _ := b.Digest()
	if da != db {
		t.Fatalf("two builds of one spec: %s and %s", da, db)
	}
	if s.Ref() != "docker.io/isthmus/isthmus:1.2.3" {
		t.Errorf("ref %s", s.Ref())
	}
	im, err := a.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if im.MediaType != "application/vnd.oci.image.index.v1+json" || len(im.Manifests) != 2 {
		t.Fatalf("index %s with %d manifests", im.MediaType, len(im.Manifests))
	}
	for i, want := range []string{"amd64", "arm64"} {
		m := im.Manifests[i]
		if m.Platform == nil || m.Platform.OS != "linux" || m.Platform.Architecture != want {
			t.Fatalf("manifest %d platform %+v, want linux/%s", i, m.Platform, want)
		}
		img, err := a.Image(m.Digest)
		if err != nil {
			t.Fatal(err)
		}
		cf, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		if cf.Architecture != want || cf.Config.User != "1337:1337" || strings.Join(cf.Config.Entrypoint, " ") != BinaryPath {
			t.Errorf("%s config: arch %s user %q entrypoint %v", want, cf.Architecture, cf.Config.User, cf.Config.Entrypoint)
		}
		if !cf.Created.Time.Equal(time.Unix(1764900000, 0)) || cf.Config.Labels["org.opencontainers.image.revision"] != "abc" {
			t.Errorf("%s config: created %v labels %v", want, cf.Created, cf.Config.Labels)
		}
		files := filesOf(t, img)
		if got := string(files[BinaryPath[1:]]); got != "isthmus for linux/"+want {
			t.Errorf("%s image's binary is %q", want, got)
		}
		if got := string(files[ProxyBinaryPath[1:]]); got != "isthmus-proxy for linux/"+want {
			t.Errorf("%s image's proxy binary is %q", want, got)
		}
		if !strings.Contains(string(files["etc/passwd"]), "istio-proxy:x:1337:1337") {
			t.Errorf("%s /etc/passwd lacks the proxy user: %q", want, files["etc/passwd"])
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(files["etc/ssl/certs/ca-certificates.crt"]) || bytes.Count(files["etc/ssl/certs/ca-certificates.crt"], []byte("BEGIN CERTIFICATE")) < 100 {
			t.Errorf("%s CA bundle unusable", want)
		}
		if p, _ := pem.Decode(files["etc/ssl/certs/ca-certificates.crt"]); p == nil {
			t.Errorf("%s CA bundle is not PEM", want)
		}
	}
}

func filesOf(t *testing.T, img v1.Image) map[string][]byte {
	t.Helper()
	rc := mutate.Extract(img)
	defer rc.Close()
	out := map[string][]byte{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		if !h.ModTime.Equal(time.Unix(1764900000, 0)) {
			t.Errorf("%s mtime %v", h.Name, h.ModTime)
		}
		b, _ := io.ReadAll(tr)
		out[h.Name] = b
	}
}

func TestBuildRefusesWhatCannotRun(t *testing.T) {
	s := testSpec(t)
	s.Binaries = map[string]Binaries{"darwin/arm64": s.Binaries["linux/arm64"]}
	if _, err := Build(s); err == nil || !strings.Contains(err.Error(), "linux only") {
		t.Errorf("darwin image: %v", err)
	}
	// Injected pods run isthmus-proxy: an image without it would not start them.
	s = testSpec(t)
	s.Binaries["linux/amd64"] = Binaries{Isthmus: s.Binaries["linux/amd64"].Isthmus}
	if _, err := Build(s); err == nil || !strings.Contains(err.Error(), "isthmus-proxy") {
		t.Errorf("an image without isthmus-proxy: %v", err)
	}
	s = testSpec(t)
	s.Entrypoint = []string{"/bin/sh"}
	if _, err := Build(s); err == nil {
		t.Error("an entrypoint outside the image was accepted")
	}
}

// The layout and the tarball are read back by go-containerregistry's own
// readers (what crane uses), and the layout pushes to a real registry under
// the same digest.
func TestWrittenImagesReadBackAndPush(t *testing.T) {
	s := testSpec(t)
	idx, err := Build(s)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := idx.Digest()
	dir := t.TempDir()
	b := Built{Ref: s.Ref(), Index: idx}
	if err := WriteLayout(filepath.Join(dir, "oci"), b); err != nil {
		t.Fatal(err)
	}
	lp, err := layout.FromPath(filepath.Join(dir, "oci"))
	if err != nil {
		t.Fatal(err)
	}
	top, err := lp.ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	tm, _ := top.IndexManifest()
	if len(tm.Manifests) != 1 || tm.Manifests[0].Digest != want || tm.Manifests[0].Annotations["io.containerd.image.name"] != s.Ref() {
		t.Fatalf("layout index.json: %+v", tm.Manifests)
	}

	tarPath := filepath.Join(dir, "isthmus.tar")
	if err := WriteTarball(tarPath, b, s.Created); err != nil {
		t.Fatal(err)
	}
	tag, _ := name.NewTag(s.Ref())
	img, err := tarball.ImageFromPath(tarPath, &tag)
	if err != nil {
		t.Fatalf("docker side of the tarball: %v", err)
	}
	cf, err := img.ConfigFile()
	if err != nil || cf.Architecture != "amd64" {
		t.Fatalf("docker side is %v (%v)", cf, err)
	}
	first, _ := os.ReadFile(tarPath)
	if err := WriteTarball(tarPath, b, s.Created); err != nil {
		t.Fatal(err)
	}
	if second, _ := os.ReadFile(tarPath); !bytes.Equal(first, second) {
		t.Error("the tarball differs between two writes")
	}

	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	ref, err := name.ParseReference(strings.TrimPrefix(srv.URL, "http://") + "/isthmus/isthmus:1.2.3")
	if err != nil {
		t.Fatal(err)
	}
	pushed, err := top.ImageIndex(want)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.WriteIndex(ref, pushed); err != nil {
		t.Fatal(err)
	}
	got, err := remote.Index(ref)
	if err != nil {
		t.Fatal(err)
	}
	if d, _ := got.Digest(); d != want {
		t.Errorf("pushed %s, registry has %s", want, d)
	}
}

func TestFullName(t *testing.T) {
	for in, want := range map[string]string{
		"isthmus/isthmus":                "docker.io/isthmus/isthmus",
		"busybox":                        "docker.io/library/busybox",
		"registry.local:5000/isthmus/x":  "registry.local:5000/isthmus/x",
		"localhost/isthmus":              "localhost/isthmus",
		"123.dkr.ecr.aws.com/mesh/isthm": "123.dkr.ecr.aws.com/mesh/isthm",
	} {
		if got := FullName(in); got != want {
			t.Errorf("FullName(%q) = %q, want %q", in, got, want)
		}
	}
}

// The demo app's image is the mesh image's one layer under another
// config: a node that has one pulls no layer for the other.
func TestDemoAppSharesTheLayer(t *testing.T) {
	specs := Mesh("isthmus", "1", "1", "", testBinaries(t), time.Unix(1764900000, 0))
	var layers [2][]v1.Hash
	for i, s := range specs {
		idx, err := Build(s)
		if err != nil {
			t.Fatal(err)
		}
		im, _ := idx.IndexManifest()
		for _, m := range im.Manifests {
			img, err := idx.Image(m.Digest)
			if err != nil {
				t.Fatal(err)
			}
			ls, _ := img.Layers()
			for _, l := range ls {
				d, _ := l.Digest()
				layers[i] = append(layers[i], d)
			}
		}
	}
	if len(layers[0]) != 2 || !slices.Equal(layers[0], layers[1]) {
		t.Errorf("mesh layers %v, demo-app layers %v", layers[0], layers[1])
	}
}

// The demo app must not run as the proxy's uid: the sidecar's capture lets
// uid 1337's traffic out uncaptured (its calls would bypass the mesh).
func TestDemoAppIsNotTheProxyUser(t *testing.T) {
	specs := Mesh("isthmus", "1", "1", "", nil, time.Unix(0, 0))
	if specs[0].user() != "1337:1337" || specs[1].user() == specs[0].user() || strings.HasPrefix(specs[1].user(), "1337") {
		t.Errorf("users: mesh %s, demo %s", specs[0].user(), specs[1].user())
	}
}
