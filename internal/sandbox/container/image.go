// Package container runs one Kubernetes container as a process inside its
// pod's network namespace, in a private mount namespace rooted in its
// image's layers (Rootfs) where the pod's volumes appear at their
// mountPath, as the container's user. Public images the sandbox cannot pull
// map to programs of this machine instead (Command).
package container

import (
	"fmt"
	"os"
	"sort"
	"strings"
)

// Image says how an image name becomes a command line.
type Image struct {
	// Entrypoint stands for the image's ENTRYPOINT.
	Entrypoint []string
	// Cmd is the image's default CMD.
	Cmd []string
}

// images maps well-known public images, which cannot be pulled here, to
// programs of this machine; keyed by repository without registry or tag.
// isthmus's own images are not here: they run from the sandbox's registry.
var images = map[string]Image{
	"curlimages/curl": {Entrypoint: []string{"curl"}},
	"busybox":         {Cmd: []string{"sh"}},
	"alpine":          {Cmd: []string{"/bin/sh"}},
	"debian":          {Cmd: []string{"bash"}},
	"ubuntu":          {Cmd: []string{"bash"}},
}

// ErrUnknownImage is wrapped by Command for images the table does not map.
type ErrUnknownImage struct{ Image string }

func (e ErrUnknownImage) Error() string {
	return fmt.Sprintf("image %q is not one the sandbox runs as a program of this machine (%s)",
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

// Command returns the host argv that stands in for a well-known public
// image, following Kubernetes' rules for command and args.
func Command(image string, command, args []string) ([]string, error) {
	img, ok := images[repository(image)]
	if !ok {
		return nil, ErrUnknownImage{Image: image}
	}
	argv, err := Argv(img.Entrypoint, img.Cmd, command, args)
	if err != nil {
		return nil, fmt.Errorf("image %q: %w", image, err)
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
