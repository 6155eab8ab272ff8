package images

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/isthmus-mesh/isthmus/internal/image"
	"github.com/isthmus-mesh/isthmus/internal/sandbox/registry"
)

func needRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("unpacking owners and whiteouts needs root")
	}
}

func startRegistry(t *testing.T, dir string) string {
	t.Helper()
	s := &registry.Server{Dir: dir, Log: slog.New(slog.DiscardHandler)}
	h, err := s.Handler()
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

// The node pulls isthmus's own multi-platform image by its docker.io name
// through the mirror, gets its platform's binary, and pulls it again from a
// restarted registry (manifests replayed from the journal).
func TestPullThroughMirrorAcrossRegistryRestart(t *testing.T) {
	needRoot(t)
	regDir := t.TempDir()
	host := startRegistry(t, regDir)
	bins := map[string]image.Binaries{}
	for _, arch := range []string{"amd64", "arm64"} {
		p := filepath.Join(t.TempDir(), arch)
		if err := os.WriteFile(p, []byte("isthmus for "+arch), 0o755); err != nil {
			t.Fatal(err)
		}
		proxy := filepath.Join(t.TempDir(), arch+"-proxy")
		if err := os.WriteFile(proxy, []byte("isthmus-proxy for "+arch), 0o755); err != nil {
			t.Fatal(err)
		}
		bins["linux/"+arch] = image.Binaries{Isthmus: p, Proxy: proxy}
	}
	spec := image.Mesh("isthmus", "1.0", "1.0", "", bins, time.Unix(1764900000, 0))[0]
	idx, err := image.Build(spec)
	if err != nil {
		t.Fatal(err)
	}
	dst, _ := name.NewTag(host+"/isthmus/isthmus:1.0", name.Insecure)
	if err := remote.WriteIndex(dst, idx); err != nil {
		t.Fatal(err)
	}
	want, _ := idx.Digest()

	store := &Store{Dir: t.TempDir(), Mirrors: map[string]string{"docker.io": host}}
	if _, err := store.Present("isthmus/isthmus:1.0"); !errors.Is(err, ErrNotPresent) {
		t.Fatalf("before any pull: %v", err)
	}
	img, err := store.Pull(context.Background(), "isthmus/isthmus:1.0")
	if err != nil {
		t.Fatalf("pull: %v", err)
	}
	if img.ID != "docker.io/isthmus/isthmus@"+want.String() {
		t.Errorf("image ID %s, want the index digest %s", img.ID, want)
	}
	if strings.Join(img.Config.Entrypoint, " ") != image.BinaryPath || img.Config.User != "1337:1337" {
		t.Errorf("config %+v", img.Config)
	}
	bin, err := os.ReadFile(filepath.Join(img.Layers[0], image.BinaryPath))
	if err != nil || string(bin) != "isthmus for "+runtime.GOARCH {
		t.Errorf("unpacked binary %q (%v)", bin, err)
	}
	if bin, err := os.ReadFile(filepath.Join(img.Layers[0], image.ProxyBinaryPath)); err != nil || string(bin) != "isthmus-proxy for "+runtime.GOARCH {
		t.Errorf("unpacked proxy binary %q (%v)", bin, err)
	}
	if fi, err := os.Stat(filepath.Join(img.Layers[0], "etc/istio/proxy")); err != nil || fi.Sys() == nil {
		t.Errorf("etc/istio/proxy: %v", err)
	}

	// IfNotPresent: present after the pull, without asking the registry.
	if got, err := store.Present("isthmus/isthmus:1.0"); err != nil || got.ID != img.ID {
		t.Errorf("present after the pull: %v %v", got, err)
	}
	// Never, and not present.
	if _, err := store.Present("isthmus/other:1.0"); !errors.Is(err, ErrNotPresent) {
		t.Errorf("never pulled: %v", err)
	}
	// Missing image: not found, as the kubelet reports it.
	if _, err := store.Pull(context.Background(), "curlimages/curl:8.1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("missing image: %v", err)
	}

	restarted := startRegistry(t, regDir)
	store2 := &Store{Dir: t.TempDir(), Mirrors: map[string]string{"docker.io": restarted}}
	img2, err := store2.Pull(context.Background(), "isthmus/isthmus:1.0")
	if err != nil {
		t.Fatalf("pull from the restarted registry: %v", err)
	}
	if img2.ID != img.ID {
		t.Errorf("after restart %s, before %s", img2.ID, img.ID)
	}
}

func layer(t *testing.T, entries ...tar.Header) v1.Layer {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range entries {
		var body []byte
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(h.Name))
			body = []byte(h.Name)
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		tw.Write(body)
	}
	tw.Close()
	b := buf.Bytes()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// A layer cannot write outside its directory: not by a ../ name, not
// through a symlink it plants first, not by a hard link to a host file.
func TestUnpackStaysInside(t *testing.T) {
	needRoot(t)
	outside := t.TempDir()
	for name, l := range map[string]v1.Layer{
		"dotdot": layer(t, tar.Header{Name: "../../../../" + outside + "/dotdot", Typeflag: tar.TypeReg, Mode: 0o644}),
		"symlink": layer(t,
			tar.Header{Name: "evil", Typeflag: tar.TypeSymlink, Linkname: outside},
			tar.Header{Name: "evil/planted", Typeflag: tar.TypeReg, Mode: 0o644}),
		"hardlink": layer(t, tar.Header{Name: "passwd", Typeflag: tar.TypeLink, Linkname: "/etc/passwd"}),
	} {
		store := &Store{Dir: t.TempDir()}
		_, _, _ = store.unpack(l)
		entries, _ := os.ReadDir(outside)
		if len(entries) != 0 {
			t.Errorf("%s: wrote %v outside the layer", name, entries)
		}
		if name == "hardlink" {
			d, _ := l.Digest()
			if fi, err := os.Stat(filepath.Join(store.Dir, "layers", d.Algorithm+"-"+d.Hex, "passwd")); err == nil {
				t.Errorf("hard link to the host's /etc/passwd made: %v", fi.Name())
			}
		}
	}
}

// OCI whiteouts become overlayfs whiteouts, so an upper layer hides a file.
func TestWhiteouts(t *testing.T) {
	needRoot(t)
	img, err := mutate.AppendLayers(empty.Image,
		layer(t, tar.Header{Name: "etc/", Typeflag: tar.TypeDir, Mode: 0o755}, tar.Header{Name: "etc/gone", Typeflag: tar.TypeReg, Mode: 0o644}),
		layer(t, tar.Header{Name: "etc/.wh.gone", Typeflag: tar.TypeReg}, tar.Header{Name: "opaque/.wh..wh..opq", Typeflag: tar.TypeReg}))
	if err != nil {
		t.Fatal(err)
	}
	ls, _ := img.Layers()
	store := &Store{Dir: t.TempDir()}
	upper, _, err := store.unpack(ls[1])
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Lstat(filepath.Join(upper, "etc/gone"))
	if err != nil || fi.Mode()&os.ModeCharDevice == 0 {
		t.Errorf("whiteout of etc/gone: %v %v", fi, err)
	}
}

// FuzzExtract feeds arbitrary layers to the unpacker: it may refuse them,
// but never panics and never writes outside its directory.
func FuzzExtract(f *testing.F) {
	if os.Geteuid() != 0 {
		f.Skip("unpacking owners and device nodes needs root")
	}
	var seed bytes.Buffer
	tw := tar.NewWriter(&seed)
	tw.WriteHeader(&tar.Header{Name: "etc/", Typeflag: tar.TypeDir, Mode: 0o755})
	tw.WriteHeader(&tar.Header{Name: "etc/x", Typeflag: tar.TypeReg, Mode: 0o644, Size: 1})
	tw.Write([]byte("x"))
	tw.WriteHeader(&tar.Header{Name: "l", Typeflag: tar.TypeSymlink, Linkname: "/"})
	tw.WriteHeader(&tar.Header{Name: "l/escaped", Typeflag: tar.TypeReg, Mode: 0o644})
	tw.WriteHeader(&tar.Header{Name: "etc/.wh.x", Typeflag: tar.TypeReg})
	tw.Close()
	f.Add(seed.Bytes())
	f.Fuzz(func(t *testing.T, layer []byte) {
		parent := t.TempDir()
		dir := filepath.Join(parent, "layer")
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		_ = extract(tar.NewReader(bytes.NewReader(layer)), dir)
		entries, _ := os.ReadDir(parent)
		if len(entries) != 1 {
			t.Fatalf("wrote beside the layer: %v", entries)
		}
		if _, err := os.Stat("/escaped"); err == nil {
			t.Fatal("wrote /escaped on the host")
		}
	})
}

// Many containers pulling one image at once all get it, and the store's
// record of the reference stays whole.
func TestConcurrentPullsOfOneImage(t *testing.T) {
	needRoot(t)
	host := startRegistry(t, t.TempDir())
	p := filepath.Join(t.TempDir(), "bin")
	if err := os.WriteFile(p, []byte("isthmus"), 0o755); err != nil {
		t.Fatal(err)
	}
	idx, err := image.Build(image.Mesh("isthmus", "2.0", "2.0", "", map[string]image.Binaries{"linux/" + runtime.GOARCH: {Isthmus: p, Proxy: p}}, time.Unix(0, 0))[0])
	if err != nil {
		t.Fatal(err)
	}
	dst, _ := name.NewTag(host+"/isthmus/isthmus:2.0", name.Insecure)
	if err := remote.WriteIndex(dst, idx); err != nil {
		t.Fatal(err)
	}
	store := &Store{Dir: t.TempDir(), Mirrors: map[string]string{"docker.io": host}}
	errs := make(chan error, 8)
	for range 8 {
		go func() {
			_, err := store.Pull(context.Background(), "isthmus/isthmus:2.0")
			errs <- err
		}()
	}
	for range 8 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	if _, err := store.Present("isthmus/isthmus:2.0"); err != nil {
		t.Errorf("the record after concurrent pulls: %v", err)
	}
}
