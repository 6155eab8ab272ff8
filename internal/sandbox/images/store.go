// Package images is the sandbox node's image store, containerd's role: it
// pulls images by reference from OCI registries (through the mirrors the
// sandbox configures, as containerd's hosts.toml does), picks the node's
// platform from an index, and unpacks each layer once, by digest, into a
// directory that overlayfs stacks into a container's root.
package images

import (
	"archive/tar"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"golang.org/x/sys/unix"
)

// Store keeps pulled images under Dir.
type Store struct {
	// Dir holds layers/<algo>-<hex>/ (unpacked) and refs/ (what a reference
	// last resolved to).
	Dir string
	// Mirrors maps a registry ("docker.io") to the plain-HTTP host:port that
	// serves it; registries not listed are pulled from directly, over plain
	// HTTP only if they are a mirror themselves.
	Mirrors map[string]string

	mu    sync.Mutex
	locks map[string]*sync.Mutex // per layer digest
}

// Image is a pulled image, ready to run.
type Image struct {
	// Ref is the reference as the pod named it.
	Ref string
	// ID is the reference by digest of what was pulled (the index's digest
	// for a multi-platform image): the pod status's imageID.
	ID string
	// Config is the image's runtime config (entrypoint, env, user, ...).
	Config v1.Config
	// Layers are the unpacked layer directories, bottom first.
	Layers []string
	// Size is the compressed size of the layers.
	Size int64
}

// ErrNotFound is wrapped when the registry has no such image (the kubelet's
// "not found" pull failure).
var ErrNotFound = errors.New("not found")

// ErrNotPresent is wrapped by Present for an image not pulled before.
var ErrNotPresent = errors.New("not present")

// registryName is the reference's registry as containerd names it
// (docker.io, not index.docker.io).
func registryName(r name.Reference) string {
	if reg := r.Context().RegistryStr(); reg != name.DefaultRegistry {
		return reg
	}
	return "docker.io"
}

// resolve maps the reference onto its mirror, if any.
func (s *Store) resolve(ref string) (name.Reference, error) {
	r, err := name.ParseReference(ref)
	if err != nil {
		return nil, fmt.Errorf("invalid image reference %q: %w", ref, err)
	}
	reg := registryName(r)
	host, mirrored := s.Mirrors[reg]
	if !mirrored {
		for _, m := range s.Mirrors {
			if m == reg {
				host, mirrored = m, true
			}
		}
	}
	if !mirrored {
		return r, nil
	}
	repo := r.Context().RepositoryStr()
	if d, ok := r.(name.Digest); ok {
		return name.NewDigest(host+"/"+repo+"@"+d.DigestStr(), name.Insecure)
	}
	return name.NewTag(host+"/"+repo+":"+r.Identifier(), name.Insecure)
}

// refFile records what a reference resolved to, for Present.
func (s *Store) refFile(ref string) string {
	return filepath.Join(s.Dir, "refs", strings.NewReplacer("/", "_", ":", "_", "@", "_").Replace(ref)+".json")
}

// Present is the image as the reference was last pulled, if its layers are
// still unpacked (imagePullPolicy IfNotPresent and Never ask this first).
func (s *Store) Present(ref string) (*Image, error) {
	b, err := os.ReadFile(s.refFile(ref))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%s: %w", ref, ErrNotPresent)
	}
	if err != nil {
		return nil, err
	}
	var img Image
	if err := json.Unmarshal(b, &img); err != nil {
		return nil, err
	}
	for _, l := range img.Layers {
		if _, err := os.Stat(l); err != nil {
			return nil, fmt.Errorf("%s: %w (layer %s is gone)", ref, ErrNotPresent, l)
		}
	}
	return &img, nil
}

// Pull asks the registry (or its mirror) for the reference, picks the
// node's platform and unpacks what is not unpacked yet.
func (s *Store) Pull(ctx context.Context, ref string) (*Image, error) {
	r, err := s.resolve(ref)
	if err != nil {
		return nil, err
	}
	opts := []remote.Option{remote.WithContext(ctx), remote.WithPlatform(v1.Platform{OS: "linux", Architecture: runtime.GOARCH}),
		remote.WithTransport(&http.Transport{ResponseHeaderTimeout: 30 * time.Second})}
	desc, err := remote.Get(r, opts...)
	if err != nil {
		var te *transport.Error
		if errors.As(err, &te) && te.StatusCode == http.StatusNotFound {
			return nil, fmt.Errorf("%s: %w (asked %s)", ref, ErrNotFound, r.Context().RegistryStr())
		}
		return nil, fmt.Errorf("%s: %w", ref, err)
	}
	// Image() picks the platform from an index.
	image, err := desc.Image()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", ref, err)
	}
	cf, err := image.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("%s: config: %w", ref, err)
	}
	layers, err := image.Layers()
	if err != nil {
		return nil, fmt.Errorf("%s: layers: %w", ref, err)
	}
	out := &Image{Ref: ref, Config: cf.Config}
	id, err := name.ParseReference(ref)
	if err != nil {
		return nil, err
	}
	out.ID = registryName(id) + "/" + id.Context().RepositoryStr() + "@" + desc.Digest.String()
	for _, l := range layers {
		dir, size, err := s.unpack(l)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", ref, err)
		}
		out.Layers = append(out.Layers, dir)
		out.Size += size
	}
	b, err := json.Marshal(out)
	if err != nil {
		return nil, err
	}
	// Pods pulling one image at once each write the record: rename makes
	// every write whole.
	if err := os.MkdirAll(filepath.Dir(s.refFile(ref)), 0o755); err != nil {
		return nil, err
	}
	f, err := os.CreateTemp(filepath.Dir(s.refFile(ref)), ".tmp-*")
	if err != nil {
		return nil, err
	}
	_, err = f.Write(b)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), s.refFile(ref))
	}
	if err != nil {
		os.Remove(f.Name())
		return nil, err
	}
	return out, nil
}

func (s *Store) layerLock(key string) *sync.Mutex {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.locks == nil {
		s.locks = map[string]*sync.Mutex{}
	}
	if s.locks[key] == nil {
		s.locks[key] = &sync.Mutex{}
	}
	return s.locks[key]
}

// unpack extracts a layer once into layers/<digest>/, translating OCI
// whiteouts into overlayfs's (a 0/0 character device, an opaque xattr).
func (s *Store) unpack(l v1.Layer) (string, int64, error) {
	d, err := l.Digest()
	if err != nil {
		return "", 0, err
	}
	size, err := l.Size()
	if err != nil {
		return "", 0, err
	}
	dir := filepath.Join(s.Dir, "layers", d.Algorithm+"-"+d.Hex)
	lock := s.layerLock(dir)
	lock.Lock()
	defer lock.Unlock()
	if _, err := os.Stat(dir); err == nil {
		return dir, size, nil
	}
	tmp := dir + ".tmp"
	_ = os.RemoveAll(tmp)
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return "", 0, err
	}
	rc, err := l.Uncompressed()
	if err != nil {
		return "", 0, fmt.Errorf("layer %s: %w", d, err)
	}
	defer rc.Close()
	if err := extract(tar.NewReader(rc), tmp); err != nil {
		_ = os.RemoveAll(tmp)
		return "", 0, fmt.Errorf("unpack layer %s: %w", d, err)
	}
	if err := os.Rename(tmp, dir); err != nil {
		return "", 0, err
	}
	return dir, size, nil
}

// extract writes a layer's entries under dir through an os.Root, so no
// entry, and no symlink an earlier entry planted, can write outside it.
func extract(tr *tar.Reader, dir string) error {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	type dirTime struct {
		rel string
		t   time.Time
	}
	var dirs []dirTime
	// inParent runs f with a descriptor of the entry's parent directory.
	inParent := func(rel string, f func(fd int, base string) error) error {
		parent, base := filepath.Split(rel)
		if parent == "" {
			parent = "."
		}
		if err := root.MkdirAll(parent, 0o755); err != nil {
			return err
		}
		d, err := root.Open(parent)
		if err != nil {
			return err
		}
		defer d.Close()
		return f(int(d.Fd()), base)
	}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		rel := strings.TrimPrefix(filepath.Clean("/"+h.Name), "/")
		if rel == "" {
			continue
		}
		base := filepath.Base(rel)
		if base == ".wh..wh..opq" {
			err := inParent(rel, func(fd int, _ string) error {
				return unix.Fsetxattr(fd, "trusted.overlay.opaque", []byte("y"), 0)
			})
			if err != nil {
				return fmt.Errorf("opaque whiteout %s: %w", h.Name, err)
			}
			continue
		}
		if gone, ok := strings.CutPrefix(base, ".wh."); ok {
			err := inParent(rel, func(fd int, _ string) error { return unix.Mknodat(fd, gone, unix.S_IFCHR, 0) })
			if err != nil {
				return fmt.Errorf("whiteout %s: %w", h.Name, err)
			}
			continue
		}
		if parent := filepath.Dir(rel); parent != "." {
			if err := root.MkdirAll(parent, 0o755); err != nil {
				return err
			}
		}
		mode := os.FileMode(h.Mode & 0o777)
		switch h.Typeflag {
		case tar.TypeDir:
			if err := root.Mkdir(rel, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
				return err
			}
			dirs = append(dirs, dirTime{rel, h.ModTime})
		case tar.TypeReg:
			f, err := root.OpenFile(rel, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
			if err != nil {
				return err
			}
			_, err = io.Copy(f, tr)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return err
			}
		case tar.TypeSymlink:
			if err := root.Symlink(h.Linkname, rel); err != nil {
				return err
			}
		case tar.TypeLink:
			if err := root.Link(strings.TrimPrefix(filepath.Clean("/"+h.Linkname), "/"), rel); err != nil {
				return err
			}
			continue
		case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
			kind := map[byte]uint32{tar.TypeChar: unix.S_IFCHR, tar.TypeBlock: unix.S_IFBLK, tar.TypeFifo: unix.S_IFIFO}[h.Typeflag]
			err := inParent(rel, func(fd int, base string) error {
				return unix.Mknodat(fd, base, kind|uint32(mode), int(unix.Mkdev(uint32(h.Devmajor), uint32(h.Devminor))))
			})
			if err != nil {
				return err
			}
		default:
			continue // other entries place nothing
		}
		if err := root.Lchown(rel, h.Uid, h.Gid); err != nil {
			return err
		}
		if h.Typeflag != tar.TypeSymlink {
			// Setuid, setgid and sticky bits are kept; Chmod after Lchown,
			// which clears them.
			if err := root.Chmod(rel, mode|modeBits(h.Mode)); err != nil {
				return err
			}
			_ = root.Chtimes(rel, h.ModTime, h.ModTime)
		}
	}
	// Directory times last: writing into a directory changes its mtime.
	for i := len(dirs) - 1; i >= 0; i-- {
		_ = root.Chtimes(dirs[i].rel, dirs[i].t, dirs[i].t)
	}
	return nil
}

func modeBits(m int64) os.FileMode {
	var out os.FileMode
	if m&0o4000 != 0 {
		out |= os.ModeSetuid
	}
	if m&0o2000 != 0 {
		out |= os.ModeSetgid
	}
	if m&0o1000 != 0 {
		out |= os.ModeSticky
	}
	return out
}
