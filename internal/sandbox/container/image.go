// Package container runs one Kubernetes container as a plain process inside
// its pod's network namespace, with a private mount namespace where the
// pod's volumes appear at their mountPath, and the container's user. There
// is no image filesystem: images map to programs on this machine.
package container

import (
	"fmt"
	"os"
	"sort"
	"strings"
)

// Image says how an image name becomes a command line.
type Image struct {
	// Entrypoint replaces the image's ENTRYPOINT; "isthmus" means this binary.
	Entrypoint []string
	// Cmd is the image's default CMD.
	Cmd []string
}

// images is the sandbox's image table, keyed by repository without registry or tag.
var images = map[string]Image{
	"isthmus":         {Entrypoint: []string{"isthmus"}},
	"curlimages/curl": {Entrypoint: []string{"curl"}},
	"busybox":         {Cmd: []string{"sh"}},
	"alpine":          {Cmd: []string{"/bin/sh"}},
	"debian":          {Cmd: []string{"bash"}},
	"ubuntu":          {Cmd: []string{"bash"}},
}

// ErrUnknownImage is wrapped by Command for images the table does not map.
type ErrUnknownImage struct{ Image string }

func (e ErrUnknownImage) Error() string {
	return fmt.Sprintf("image %q has no mapping in the isthmus sandbox (pods run local programs, not image filesystems); known images: %s, and any image named isthmus or */isthmus",
		e.Image, strings.Join(KnownImages(), ", "))
}

// KnownImages lists the mapped repositories.
func KnownImages() []string {
	out := make([]string, 0, len(images))
	for k := range images {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// repository strips registry, "library/", tag and digest: docker.io/library/busybox:1.36 -> busybox.
func repository(image string) string {
	if i := strings.IndexByte(image, '@'); i >= 0 {
		image = image[:i]
	}
	parts := strings.Split(image, "/")
	if len(parts) > 1 && (strings.ContainsAny(parts[0], ".:") || parts[0] == "localhost") {
		parts = parts[1:]
	}
	last := parts[len(parts)-1]
	if i := strings.IndexByte(last, ':'); i >= 0 {
		parts[len(parts)-1] = last[:i]
	}
	if len(parts) > 1 && parts[0] == "library" {
		parts = parts[1:]
	}
	return strings.Join(parts, "/")
}

// Command returns the argv a container runs, following Kubernetes' rules for
// command (replaces ENTRYPOINT) and args (replaces CMD). self is the path of
// the isthmus binary.
func Command(image string, command, args []string, self string) ([]string, error) {
	repo := repository(image)
	img, ok := images[repo]
	if !ok && (strings.HasSuffix(repo, "/isthmus") || strings.HasPrefix(repo, "isthmus/")) {
		img, ok = images["isthmus"], true
	}
	if !ok {
		return nil, ErrUnknownImage{Image: image}
	}
	argv, err := Argv(img.Entrypoint, img.Cmd, command, args)
	if err != nil {
		return nil, fmt.Errorf("image %q: %w", image, err)
	}
	if argv[0] == "isthmus" || argv[0] == "/usr/local/bin/isthmus" {
		argv[0] = self
	}
	return argv, nil
}

// Argv applies Kubernetes' rules: command replaces the image's ENTRYPOINT
// (and drops its CMD), args replace its CMD.
func Argv(entrypoint, cmd, command, args []string) ([]string, error) {
	var argv []string
	switch {
	case len(command) > 0:
		argv = append(append(argv, command...), args...)
	case len(args) > 0:
		argv = append(append(argv, entrypoint...), args...)
	default:
		argv = append(append(argv, entrypoint...), cmd...)
	}
	if len(argv) == 0 {
		return nil, fmt.Errorf("no command: the image has no ENTRYPOINT or CMD; set command in the container spec")
	}
	return argv, nil
}

// Self is the path of the running isthmus binary.
func Self() string {
	p, err := os.Executable()
	if err != nil {
		return "isthmus"
	}
	return p
}
