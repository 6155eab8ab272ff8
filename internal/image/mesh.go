package image

import (
	"strings"
	"time"
)

// Mesh is the images a release ships: isthmus itself (the control plane,
// every proxy and the CLI; what `isthmus install` renders as HUB/isthmus:TAG)
// and the walkthrough's demo app, the same binary behind `demo-app`. Both
// hold the same single layer (isthmus, isthmus-proxy, CA certificates), so
// a node that pulled one has the other's layer.
func Mesh(hub, tag, version, revision string, binaries map[string]Binaries, created time.Time) []Spec {
	hub = strings.TrimSuffix(hub, "/")
	base := Spec{
		Tag:      tag,
		Binaries: binaries,
		Version:  version,
		Revision: revision,
		Source:   "https://github.com/isthmus-mesh/isthmus",
		Created:  created,
	}
	mesh, demo := base, base
	mesh.Repository = FullName(hub + "/isthmus")
	mesh.Entrypoint = []string{BinaryPath}
	mesh.Title = "isthmus"
	mesh.Description = "isthmus: control plane (discovery), sidecar and gateway proxy, installer"
	demo.Repository = FullName(hub + "/demo-app")
	demo.Entrypoint = []string{BinaryPath, "demo-app"}
	// Not the proxy's uid: the sidecar would not capture the app's calls.
	demo.User = "65532:65532"
	demo.Title = "isthmus demo-app"
	demo.Description = "the walkthrough's demo services: profile, accounts, dashboard, sleep, issuer"
	return []Spec{mesh, demo}
}

// FullName qualifies a repository as container runtimes do: a first part
// without a dot, colon or "localhost" is a Docker Hub path, and a single
// name is in Docker Hub's library (isthmus/isthmus -> docker.io/isthmus/isthmus).
func FullName(repo string) string {
	first, _, found := strings.Cut(repo, "/")
	if found && (strings.ContainsAny(first, ".:") || first == "localhost") {
		return repo
	}
	if !found {
		return "docker.io/library/" + repo
	}
	return "docker.io/" + repo
}
