package image

import (
	"archive/tar"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/partial"
)

// Built is one built image index and the reference it is published under.
type Built struct {
	Ref   string
	Index v1.ImageIndex
}

// refAnnotations name an index in an OCI layout's index.json: the OCI key
// (ctr import and skopeo read it) and containerd's full name.
func refAnnotations(ref string) map[string]string {
	return map[string]string{
		"org.opencontainers.image.ref.name": ref,
		"io.containerd.image.name":          ref,
	}
}

// WriteLayout writes the images into a fresh OCI image layout at dir (what
// `crane push --index DIR REF` and `skopeo copy oci:DIR` read).
func WriteLayout(dir string, images ...Built) error {
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return err
	}
	for _, b := range images {
		if err := p.AppendIndex(b.Index, layout.WithAnnotations(refAnnotations(b.Ref))); err != nil {
			return fmt.Errorf("write %s to %s: %w", b.Ref, dir, err)
		}
	}
	return nil
}

// WriteTarball writes one image as a single tar that is at once an OCI image
// layout (ctr import, docker load since Docker 25) and a `docker save`
// archive (manifest.json, for older docker load), as Docker 25 itself writes
// them. manifest.json names the linux/amd64 image: docker load takes one
// image per tag.
func WriteTarball(path string, b Built, mtime time.Time) error {
	files := map[string][]byte{
		"oci-layout": []byte(`{"imageLayoutVersion":"1.0.0"}`),
	}
	blob := func(h v1.Hash) string { return "blobs/" + h.Algorithm + "/" + h.Hex }
	idxDigest, err := b.Index.Digest()
	if err != nil {
		return err
	}
	rawIdx, err := b.Index.RawManifest()
	if err != nil {
		return err
	}
	files[blob(idxDigest)] = rawIdx
	desc, err := partial.Descriptor(b.Index)
	if err != nil {
		return err
	}
	desc.Annotations = refAnnotations(b.Ref)
	top, err := json.Marshal(v1.IndexManifest{
		SchemaVersion: 2,
		MediaType:     "application/vnd.oci.image.index.v1+json",
		Manifests:     []v1.Descriptor{*desc},
	})
	if err != nil {
		return err
	}
	files["index.json"] = top

	im, err := b.Index.IndexManifest()
	if err != nil {
		return err
	}
	type dockerEntry struct {
		Config   string
		RepoTags []string
		Layers   []string
	}
	var docker []dockerEntry
	for _, m := range im.Manifests {
		img, err := b.Index.Image(m.Digest)
		if err != nil {
			return err
		}
		raw, err := img.RawManifest()
		if err != nil {
			return err
		}
		files[blob(m.Digest)] = raw
		cfgName, err := img.ConfigName()
		if err != nil {
			return err
		}
		cfg, err := img.RawConfigFile()
		if err != nil {
			return err
		}
		files[blob(cfgName)] = cfg
		layers, err := img.Layers()
		if err != nil {
			return err
		}
		entry := dockerEntry{Config: blob(cfgName), RepoTags: []string{b.Ref}}
		for _, l := range layers {
			d, err := l.Digest()
			if err != nil {
				return err
			}
			rc, err := l.Compressed()
			if err != nil {
				return err
			}
			body, err := io.ReadAll(rc)
			rc.Close()
			if err != nil {
				return err
			}
			files[blob(d)] = body
			entry.Layers = append(entry.Layers, blob(d))
		}
		if m.Platform != nil && m.Platform.OS == "linux" && m.Platform.Architecture == "amd64" {
			docker = append(docker, entry)
		}
	}
	if len(docker) > 0 {
		if files["manifest.json"], err = json.Marshal(docker); err != nil {
			return err
		}
	}

	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp := path + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	tw := tar.NewWriter(f)
	write := func(h *tar.Header, body []byte) error {
		h.Mode, h.ModTime, h.Format = 0o644, mtime, tar.FormatPAX
		if h.Typeflag == tar.TypeDir {
			h.Mode = 0o755
		}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		_, err := tw.Write(body)
		return err
	}
	// Every blob is sha256: the two directories, then the files by name.
	for _, d := range []string{"blobs/", "blobs/sha256/"} {
		if err := write(&tar.Header{Name: d, Typeflag: tar.TypeDir}, nil); err != nil {
			f.Close()
			return err
		}
	}
	for _, n := range names {
		if err := write(&tar.Header{Name: n, Typeflag: tar.TypeReg, Size: int64(len(files[n]))}, files[n]); err != nil {
			f.Close()
			return err
		}
	}
	if err := tw.Close(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
