package sandbox

import (
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"path/filepath"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/isthmus-mesh/isthmus/internal/sandbox/controlplane"
	"github.com/isthmus-mesh/isthmus/internal/sandbox/network"
	"github.com/isthmus-mesh/isthmus/internal/sandbox/process"
)

// RegistryAddr is the sandbox's OCI registry, on the internet segment: the
// host pushes to it, and every node pulls docker.io images through it.
var RegistryAddr = netip.AddrPortFrom(network.RouterAddr, 5000)

// Mirrors is what the nodes are told: docker.io is served by the registry.
func Mirrors() map[string]string { return map[string]string{"docker.io": RegistryAddr.String()} }

// RegistryDir holds the registry's blobs and manifest journal.
func (l Layout) RegistryDir() string { return filepath.Join(l.Dir, "registry") }

// registry is the sandbox-wide registry process, run in the internet namespace.
func (s *Sandbox) registry(self string) controlplane.Component {
	url := "http://" + RegistryAddr.String() + "/v2/"
	client := &http.Client{Timeout: 2 * time.Second}
	return controlplane.Component{
		Name:  "registry",
		Ports: []int{int(RegistryAddr.Port())},
		Spec: process.Spec{
			Name:  "registry",
			Path:  self,
			Args:  []string{"sandbox", "registry", "--dir=" + s.Layout.RegistryDir(), "--listen=" + RegistryAddr.String()},
			Dir:   s.Layout.Dir,
			NetNS: network.InternetNS,
			Log:   filepath.Join(s.Layout.Dir, "logs", "registry.log"),
			PID:   filepath.Join(s.Layout.Dir, "run", "registry.pid"),
		},
		Health: func(ctx context.Context) error { return controlplane.HTTPHealth(ctx, client, url, "") },
	}
}

// upRegistry starts the registry unless it runs and answers.
func (s *Sandbox) upRegistry(ctx context.Context, self string) error {
	running, err := ensureRunning(ctx, network.InternetNS, s.registry(self))
	if err == nil && !running {
		s.say("registry ready at %s (docker.io's mirror for the nodes)", RegistryAddr)
	}
	return err
}

// Loaded is one image pushed into the sandbox's registry.
type Loaded struct {
	Ref    string // as the pods name it: docker.io/isthmus/isthmus:TAG
	Digest string
}

// Load pushes every image of an OCI layout (`make image` writes
// dist/image/oci) into the sandbox's registry, under the docker.io names
// the layout gives them, so pods naming those images pull them.
func Load(ctx context.Context, dir string) ([]Loaded, error) {
	p, err := layout.FromPath(dir)
	if err != nil {
		return nil, fmt.Errorf("%s is not an OCI image layout (build one with `make image`): %w", dir, err)
	}
	top, err := p.ImageIndex()
	if err != nil {
		return nil, err
	}
	im, err := top.IndexManifest()
	if err != nil {
		return nil, err
	}
	var out []Loaded
	for _, d := range im.Manifests {
		ref := d.Annotations["io.containerd.image.name"]
		if ref == "" {
			ref = d.Annotations["org.opencontainers.image.ref.name"]
		}
		named, err := name.ParseReference(ref)
		if err != nil {
			return nil, fmt.Errorf("%s: manifest %s has no usable image name (%q): %w", dir, d.Digest, ref, err)
		}
		if named.Context().RegistryStr() != name.DefaultRegistry {
			return nil, fmt.Errorf("%s is not a docker.io image: the sandbox's registry stands in for docker.io only (build with the default HUB, or push to your own registry)", ref)
		}
		dst, err := name.ParseReference(RegistryAddr.String()+"/"+named.Context().RepositoryStr()+":"+named.Identifier(), name.Insecure)
		if err != nil {
			return nil, err
		}
		opts := []remote.Option{remote.WithContext(ctx)}
		switch {
		case d.MediaType.IsIndex():
			idx, err := top.ImageIndex(d.Digest)
			if err != nil {
				return nil, err
			}
			err = remote.WriteIndex(dst, idx, opts...)
			if err != nil {
				return nil, fmt.Errorf("push %s to the sandbox's registry: %w", ref, err)
			}
		case d.MediaType.IsImage():
			img, err := top.Image(d.Digest)
			if err != nil {
				return nil, err
			}
			if err := remote.Write(dst, img, opts...); err != nil {
				return nil, fmt.Errorf("push %s to the sandbox's registry: %w", ref, err)
			}
		default:
			continue
		}
		out = append(out, Loaded{Ref: "docker.io/" + named.Context().RepositoryStr() + ":" + named.Identifier(), Digest: d.Digest.String()})
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s holds no images", dir)
	}
	return out, nil
}
