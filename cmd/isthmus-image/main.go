// Command isthmus-image builds isthmus's container images from binaries
// already cross-built for Linux, without a container engine; `make image`
// runs it. It writes an OCI image layout holding every image and, per image,
// a tarball that docker load and ctr import accept, and prints each image's
// reference and digest. The layout names each image by its tag and latest.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/isthmus-mesh/isthmus/internal/image"
)

// binaries is a repeated PLATFORM=PATH flag.
type binaries map[string]string

func (b binaries) String() string { return fmt.Sprint(map[string]string(b)) }
func (b binaries) Set(v string) error {
	plat, path, ok := strings.Cut(v, "=")
	if !ok || plat == "" || path == "" {
		return fmt.Errorf("want PLATFORM=PATH (linux/amd64=dist/linux-amd64/isthmus), got %q", v)
	}
	b[plat] = path
	return nil
}

func main() {
	bins := binaries{}
	out := flag.String("out", "dist/image", "directory for the OCI layouts (oci/ with every image, NAME/ per image), the tarballs and digests.txt")
	hub := flag.String("hub", "isthmus", "registry and path of the images, as IstioOperator's hub")
	tag := flag.String("tag", "dev", "the images' tag, as IstioOperator's tag")
	version := flag.String("version", "", "version label (default: the tag)")
	revision := flag.String("revision", "", "source revision label (the commit)")
	epoch := flag.String("source-date-epoch", os.Getenv("SOURCE_DATE_EPOCH"), "Unix time stamped on the images and their files (the commit's time); required")
	proxyBins := binaries{}
	flag.Var(bins, "binary", "PLATFORM=PATH of a static isthmus binary for that platform; repeat per platform")
	flag.Var(proxyBins, "proxy-binary", "PLATFORM=PATH of a static isthmus-proxy binary for that platform (what injected pods run); one per --binary")
	flag.Parse()
	if err := run(*out, *hub, *tag, *version, *revision, *epoch, bins, proxyBins); err != nil {
		fmt.Fprintln(os.Stderr, "isthmus-image:", err)
		os.Exit(1)
	}
}

func run(out, hub, tag, version, revision, epoch string, bins, proxyBins binaries) error {
	secs, err := strconv.ParseInt(epoch, 10, 64)
	if err != nil {
		return fmt.Errorf("--source-date-epoch (or SOURCE_DATE_EPOCH) must be a Unix time, got %q: it makes the images reproducible", epoch)
	}
	platforms := map[string]image.Binaries{}
	for p, path := range bins {
		platforms[p] = image.Binaries{Isthmus: path, Proxy: proxyBins[p]}
	}
	for p := range proxyBins {
		if _, ok := bins[p]; !ok {
			return fmt.Errorf("--proxy-binary for %s without a --binary for it", p)
		}
	}
	if version == "" {
		version = tag
	}
	created := time.Unix(secs, 0).UTC()
	var built []image.Built
	var digests strings.Builder
	for _, spec := range image.Mesh(hub, tag, version, revision, platforms, created) {
		idx, err := image.Build(spec)
		if err != nil {
			return err
		}
		d, err := idx.Digest()
		if err != nil {
			return err
		}
		b := image.Built{Ref: spec.Ref(), Index: idx}
		// The layout also names each image :latest, what a pod naming the
		// repository alone pulls (the sandbox's demo does).
		built = append(built, b, image.Built{Ref: spec.Repository + ":latest", Index: idx})
		// Per image, a layout of its own: `crane push DIR REF` pushes a
		// single-entry layout's index, both platforms.
		own := filepath.Join(out, filepath.Base(spec.Repository))
		if err := image.WriteLayout(own, b); err != nil {
			return err
		}
		tarball := filepath.Join(out, filepath.Base(spec.Repository)+".tar")
		if err := image.WriteTarball(tarball, b, created); err != nil {
			return fmt.Errorf("write %s: %w", tarball, err)
		}
		fmt.Fprintf(&digests, "%s@%s\n", spec.Ref(), d)
		fmt.Printf("%s@%s\n  layout %s, tarball %s\n", spec.Ref(), d, own, tarball)
	}
	layoutDir := filepath.Join(out, "oci")
	if err := image.WriteLayout(layoutDir, built...); err != nil {
		return err
	}
	fmt.Printf("OCI layout %s\n", layoutDir)
	return os.WriteFile(filepath.Join(out, "digests.txt"), []byte(digests.String()), 0o644)
}
