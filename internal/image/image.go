// Package image builds isthmus's container images without a container
// engine: an OCI image index with one image per Linux platform, each the
// static binaries (isthmus and isthmus-proxy) on an empty base with CA
// certificates and a non-root user (uid 1337, as Istio's proxy). Every byte follows from the binaries, the
// spec and the CA bundle of a pinned module, so the same commit gives the same
// digest on any machine.
package image

import (
	"archive/tar"
	"bytes"
	"encoding/pem"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"golang.org/x/crypto/x509roots/fallback/bundle"
)

// BinaryPath is where the isthmus binary sits in every image.
const BinaryPath = "/usr/local/bin/isthmus"

// ProxyBinaryPath is where the isthmus-proxy binary sits in every image:
// the data plane alone, which injected sidecars and gateways run (their
// command) so that a pod's memory holds no control plane or Kubernetes
// client code. The injector writes the same path (inject.ProxyCommand; a
// test ties them).
const ProxyBinaryPath = "/usr/local/bin/isthmus-proxy"

// ProxyUID is the default user of the images: Istio's proxy user, which the
// sidecar's iptables rules exempt from capture.
const ProxyUID = 1337

// Spec describes one image.
type Spec struct {
	// Repository is the image's name without tag, e.g. docker.io/isthmus/isthmus.
	Repository string
	// Tag is the image's tag, e.g. the version.
	Tag string
	// Binaries maps a platform ("linux/amd64") to the binaries built for
	// it; the index lists the platforms in sorted order.
	Binaries map[string]Binaries
	// Entrypoint is the image's ENTRYPOINT; its first word is BinaryPath.
	Entrypoint []string
	// User is the default "uid:gid" (default: the proxy's, 1337:1337). An
	// application must not run as 1337: the sidecar's capture lets that
	// user's traffic out uncaptured.
	User string
	// Title, Version, Revision and Source become OCI labels.
	Title, Description, Version, Revision, Source string
	// Created stamps the configs and every file (SOURCE_DATE_EPOCH: the commit's time).
	Created time.Time
}

// Binaries are the paths of the two programs of an image, built for one
// platform.
type Binaries struct {
	// Isthmus is the isthmus binary, installed at BinaryPath.
	Isthmus string
	// Proxy is the isthmus-proxy binary, installed at ProxyBinaryPath.
	Proxy string
}

// Ref is the image's reference, repository:tag.
func (s Spec) Ref() string { return s.Repository + ":" + s.Tag }

// Build assembles the image index: one image per platform, each one layer.
func Build(s Spec) (v1.ImageIndex, error) {
	if len(s.Binaries) == 0 {
		return nil, fmt.Errorf("image %s: no binaries given", s.Ref())
	}
	if len(s.Entrypoint) == 0 || s.Entrypoint[0] != BinaryPath {
		return nil, fmt.Errorf("image %s: entrypoint must start with %s", s.Ref(), BinaryPath)
	}
	platforms := make([]string, 0, len(s.Binaries))
	for p := range s.Binaries {
		platforms = append(platforms, p)
	}
	sort.Strings(platforms)
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	for _, p := range platforms {
		plat, err := v1.ParsePlatform(p)
		if err != nil {
			return nil, fmt.Errorf("image %s: platform %q: %w", s.Ref(), p, err)
		}
		if plat.OS != "linux" {
			return nil, fmt.Errorf("image %s: platform %q: images are for linux only", s.Ref(), p)
		}
		b := s.Binaries[p]
		if b.Isthmus == "" || b.Proxy == "" {
			return nil, fmt.Errorf("image %s: platform %s needs both the isthmus and the isthmus-proxy binary (got %q and %q)", s.Ref(), p, b.Isthmus, b.Proxy)
		}
		bin, err := os.ReadFile(b.Isthmus)
		if err != nil {
			return nil, fmt.Errorf("image %s: binary for %s: %w", s.Ref(), p, err)
		}
		proxyBin, err := os.ReadFile(b.Proxy)
		if err != nil {
			return nil, fmt.Errorf("image %s: proxy binary for %s: %w", s.Ref(), p, err)
		}
		img, err := s.image(*plat, bin, proxyBin)
		if err != nil {
			return nil, fmt.Errorf("image %s for %s: %w", s.Ref(), p, err)
		}
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{
			Add:        img,
			Descriptor: v1.Descriptor{Platform: plat},
		})
	}
	return idx, nil
}

func (s Spec) image(plat v1.Platform, bin, proxyBin []byte) (v1.Image, error) {
	fs, err := s.rootfs(bin, proxyBin)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(fs)), nil
	}, tarball.WithMediaType(types.OCILayer), tarball.WithCompressedCaching)
	if err != nil {
		return nil, err
	}
	base := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	img, err := mutate.Append(base, mutate.Addendum{
		Layer: layer,
		History: v1.History{
			Created:   v1.Time{Time: s.Created},
			CreatedBy: "isthmus image build: " + BinaryPath + ", " + ProxyBinaryPath + ", CA certificates, passwd",
			Comment:   "built without a container engine by internal/image",
		},
	})
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Variant = plat.OS, plat.Architecture, plat.Variant
	cf.Created = v1.Time{Time: s.Created}
	cf.Author = "isthmus"
	cf.Config = v1.Config{
		User:       s.user(),
		Entrypoint: s.Entrypoint,
		WorkingDir: "/",
		Env: []string{
			"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
			"SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt",
		},
		Labels: s.labels(),
	}
	return mutate.ConfigFile(img, cf)
}

func (s Spec) user() string {
	if s.User != "" {
		return s.User
	}
	return fmt.Sprintf("%d:%d", ProxyUID, ProxyUID)
}

// labels are the OCI annotation keys, as labels, that registries and
// scanners read.
func (s Spec) labels() map[string]string {
	l := map[string]string{
		"org.opencontainers.image.title":   s.Title,
		"org.opencontainers.image.created": s.Created.UTC().Format(time.RFC3339),
		"org.opencontainers.image.vendor":  "isthmus",
	}
	for k, v := range map[string]string{
		"org.opencontainers.image.description": s.Description,
		"org.opencontainers.image.version":     s.Version,
		"org.opencontainers.image.revision":    s.Revision,
		"org.opencontainers.image.source":      s.Source,
	} {
		if v != "" {
			l[k] = v
		}
	}
	return l
}

// rootfs is the layer's tar: directories first, every entry owned by root
// unless it is the proxy's, every time the spec's.
func (s Spec) rootfs(bin, proxyBin []byte) ([]byte, error) {
	ca, err := caBundle()
	if err != nil {
		return nil, err
	}
	type entry struct {
		name string
		mode int64
		uid  int
		body []byte
		dir  bool
	}
	entries := []entry{
		{name: "etc/", mode: 0o755, dir: true},
		{name: "etc/group", mode: 0o644, body: []byte("root:x:0:\nistio-proxy:x:1337:\nnonroot:x:65532:\nnogroup:x:65534:\n")},
		{name: "etc/nsswitch.conf", mode: 0o644, body: []byte("hosts: files dns\n")},
		{name: "etc/passwd", mode: 0o644, body: []byte("root:x:0:0:root:/root:/sbin/nologin\nistio-proxy:x:1337:1337:istio-proxy:/home/istio-proxy:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n")},
		{name: "etc/ssl/", mode: 0o755, dir: true},
		{name: "etc/ssl/certs/", mode: 0o755, dir: true},
		{name: "etc/ssl/certs/ca-certificates.crt", mode: 0o644, body: ca},
		{name: "etc/istio/", mode: 0o755, dir: true},
		{name: "etc/istio/proxy/", mode: 0o755, uid: ProxyUID, dir: true},
		{name: "home/", mode: 0o755, dir: true},
		{name: "home/istio-proxy/", mode: 0o755, uid: ProxyUID, dir: true},
		{name: "root/", mode: 0o700, dir: true},
		{name: "tmp/", mode: 0o1777, dir: true},
		{name: "usr/", mode: 0o755, dir: true},
		{name: "usr/local/", mode: 0o755, dir: true},
		{name: "usr/local/bin/", mode: 0o755, dir: true},
		{name: strings.TrimPrefix(BinaryPath, "/"), mode: 0o755, body: bin},
		{name: strings.TrimPrefix(ProxyBinaryPath, "/"), mode: 0o755, body: proxyBin},
		{name: "var/", mode: 0o755, dir: true},
		{name: "var/run/", mode: 0o755, dir: true},
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{
			Name:    e.name,
			Mode:    e.mode,
			Uid:     e.uid,
			Gid:     e.uid,
			ModTime: s.Created,
			Format:  tar.FormatPAX,
		}
		if e.uid != 0 {
			h.Uname, h.Gname = "istio-proxy", "istio-proxy"
		} else {
			h.Uname, h.Gname = "root", "root"
		}
		if e.dir {
			h.Typeflag = tar.TypeDir
		} else {
			h.Typeflag, h.Size = tar.TypeReg, int64(len(e.body))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(e.body); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// caBundle is Mozilla's trust store as Go's x509roots module pins it, as PEM.
// Roots that carry constraints a PEM file cannot express (distrust after a
// date) are left out rather than trusted without them.
func caBundle() ([]byte, error) {
	var out bytes.Buffer
	n := 0
	for r := range bundle.Roots() {
		if r.Constraint != nil {
			continue
		}
		if err := pem.Encode(&out, &pem.Block{Type: "CERTIFICATE", Bytes: r.Certificate}); err != nil {
			return nil, err
		}
		n++
	}
	if n == 0 {
		return nil, fmt.Errorf("the CA bundle is empty")
	}
	return out.Bytes(), nil
}
