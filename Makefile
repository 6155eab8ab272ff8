# isthmus: its binaries, tests, demo and benchmarks.
GO      ?= go
BIN     := bin/isthmus
# The proxy alone, what injected pods run (README, "Two binaries").
PROXY_BIN := bin/isthmus-proxy
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
# No debug information (-w; the compiler then need not write it): stack
# traces and profiles need none, the compile is a fifth shorter, and
# `isthmus sandbox prepare` builds Kubernetes with the same flags and tag
# from modules at isthmus's versions, so the ~900 packages both compile
# (the standard library, client-go, gRPC, protobuf) are compiled once
# (internal/sandbox/kubebin, BENCHMARKS.md).
GCFLAGS := -gcflags=all=-dwarf=false
LDFLAGS := -w -X github.com/isthmus-mesh/isthmus/internal/version.Version=$(VERSION)
# grpc-go without golang.org/x/net/trace (grpc's grpcnotrace tag): isthmus
# never turns grpc's request tracing on, and the html/template that package
# brings in calls reflect's MethodByName, which makes the linker keep every
# exported method of every type: a fifth of isthmus-proxy's code (BENCHMARKS.md).
export GOFLAGS += -tags=grpcnotrace
# Debian packages the sandbox needs on a fresh machine.
APT_PKGS := iptables conntrack iproute2 util-linux curl
TEST_PKGS := chromium
# staticcheck, pinned (its checks: staticcheck.conf).
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2

# Images: HUB and TAG as IstioOperator's hub and tag (install renders HUB/isthmus:TAG).
HUB       ?= isthmus
TAG       ?= $(VERSION)
IMAGE_DIR ?= dist/image
PLATFORMS := linux/amd64 linux/arm64

.PHONY: help build deps kube istiod lint test unit fuzz demo bench clean image

help: ## list targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-8s %s\n", $$1, $$2}'

# bin/isthmus and bin/isthmus-proxy are built as make image builds its
# Linux binaries (static, -trimpath), so the image's build for this
# machine's platform finds every package compiled and only links: cold,
# that is one compile of isthmus's ~1,100 packages instead of two.
build: ## build bin/isthmus and bin/isthmus-proxy
	CGO_ENABLED=0 $(GO) build -trimpath $(GCFLAGS) -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/isthmus
	CGO_ENABLED=0 $(GO) build -trimpath $(GCFLAGS) -ldflags "$(LDFLAGS)" -o $(PROXY_BIN) ./cmd/isthmus-proxy

# make release: the binary for each of RELEASE_PLATFORMS in dist, and their
# checksums; the macOS and Windows ones leave out the Linux-only commands.
RELEASE_PLATFORMS := linux/amd64 linux/arm64 darwin/amd64 darwin/arm64 windows/amd64 windows/arm64

.PHONY: release
release: ## cross-build dist/isthmus-VERSION-OS-ARCH for Linux, macOS and Windows, and dist/SHA256SUMS
	rm -f dist/isthmus-* dist/SHA256SUMS && mkdir -p dist
	@for p in $(RELEASE_PLATFORMS); do \
		os=$${p%/*}; arch=$${p#*/}; ext=; [ $$os != windows ] || ext=.exe; \
		out=dist/isthmus-$(VERSION)-$$os-$$arch$$ext; echo "$$out"; \
		CGO_ENABLED=0 GOOS=$$os GOARCH=$$arch $(GO) build -trimpath $(GCFLAGS) -ldflags "$(LDFLAGS)" -o $$out ./cmd/isthmus || exit 1; \
	done
	cd dist && sha256sum isthmus-* > SHA256SUMS

deps: ## install the Debian packages the sandbox needs (root), and for make test Chromium (the dashboard's browser tests)
	@missing=""; for p in $(APT_PKGS) $(if $(filter test,$(MAKECMDGOALS)),$(TEST_PKGS)); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

# make image cross-builds static binaries (no cgo, -trimpath: the same
# commit gives the same bytes) and assembles the images without a container
# engine; files and configs are stamped with the commit's time. The
# assembler is built as bin/isthmus is, to share its compiled packages.
image: ## build the isthmus and demo-app images for linux/amd64 and arm64 (OCI layout and tarballs in IMAGE_DIR)
	@for p in $(PLATFORMS); do \
		for b in isthmus isthmus-proxy; do \
			echo "building $$b for $$p"; \
			CGO_ENABLED=0 GOOS=$${p%/*} GOARCH=$${p#*/} $(GO) build -trimpath $(GCFLAGS) -ldflags "$(LDFLAGS)" -o $(IMAGE_DIR)/bin/$${p%/*}-$${p#*/}/$$b ./cmd/$$b || exit 1; \
		done; \
	done
	SOURCE_DATE_EPOCH=$$(git log -1 --format=%ct 2>/dev/null || echo 0) CGO_ENABLED=0 $(GO) run -trimpath $(GCFLAGS) ./cmd/isthmus-image \
		--out $(IMAGE_DIR) --hub $(HUB) --tag $(TAG) --revision "$$(git rev-parse HEAD 2>/dev/null)" \
		$(foreach p,$(PLATFORMS),--binary $(p)=$(IMAGE_DIR)/bin/$(subst /,-,$(p))/isthmus --proxy-binary $(p)=$(IMAGE_DIR)/bin/$(subst /,-,$(p))/isthmus-proxy)

kube: build ## build and cache the Kubernetes binaries (once per machine, ~10 min cold)
	$(BIN) sandbox prepare

# The walkthrough's differential test runs Istio's own istiod beside isthmus
# and compares their EDS, and points Istio's own istioctl at the mesh; both
# binaries are cached as the Kubernetes ones are.
istiod: ## build and cache Istio's pilot-discovery and istioctl for the walkthrough's tests (once per machine, ~12 min cold)
	$(GO) run ./test/istiod pilot-discovery istioctl

lint: ## gofmt, go vet, staticcheck and the package boundaries (proxy and control plane apart)
	@out=$$(gofmt -l cmd internal test bench); if [ -n "$$out" ]; then echo "not gofmt'ed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...
	$(GO) test -count=1 -run TestPackageBoundaries ./test/contract/

test: deps kube istiod lint ## lint, then every test but the benchmarks (needs root for the sandbox tests)
	$(GO) test -race -count=1 -timeout 50m $$($(GO) list ./... | grep -v /test/release)
	# Again without -race: race builds read and write sockets through syscall.Read/Write (internal/proxy/rawtcp).
	$(GO) test -count=1 ./internal/proxy/ ./internal/proxy/rawtcp/
	# The six release targets last, alone: cold, their cross-builds take
	# most of two cores for a quarter of an hour, which the e2e's timings
	# should not share.
	$(GO) test -count=1 -timeout 40m ./test/release/

unit: ## run the fast tests only (no sandbox, no root)
	$(GO) test -race -short -count=1 ./...
	$(GO) test -short -count=1 ./internal/proxy/ ./internal/proxy/rawtcp/

# make fuzz runs every fuzz target (func Fuzz... in a _test.go file; go test
# fuzzes one per run) for FUZZTIME each, and fails at the end if any failed.
# test/e2e is left out: its TestMain starts the sandbox.
FUZZTIME ?= 10s

fuzz: ## run every fuzz target for FUZZTIME each (default 10s; FUZZTIME=10m for a longer run)
	@failed=""; \
	for file in $$(grep -rl --include='*_test.go' --exclude-dir=e2e '^func Fuzz' cmd internal test bench | sort); do \
		for name in $$(sed -n 's/^func \(Fuzz[A-Za-z0-9_]*\)(.*/\1/p' $$file); do \
			echo "== $$name ./$$(dirname $$file)"; \
			$(GO) test -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) ./$$(dirname $$file)/ || failed="$$failed $$name"; \
		done; \
	done; \
	if [ -n "$$failed" ]; then echo "fuzz targets that failed:$$failed"; exit 1; fi

# make demo builds the Kubernetes binaries and the images at once, after
# bin/isthmus (which both need or reuse): each cold build keeps two cores
# busy most of the time, but not its slowest packages and links. Its images
# are for this machine's platform only, the one the sandbox pulls (make
# image builds both; DEMO_PLATFORMS="$(PLATFORMS)" makes the demo do so too).
DEMO_PLATFORMS ?= $(shell $(GO) env GOOS)/$(shell $(GO) env GOARCH)

demo: deps build ## build the images for this machine, push them into the sandbox's registry, replay the walkthrough on it and report what it built
	$(MAKE) --no-print-directory -j2 kube image PLATFORMS="$(DEMO_PLATFORMS)"
	$(BIN) sandbox up
	$(BIN) sandbox load $(IMAGE_DIR)/oci
	ISTHMUS=$(CURDIR)/$(BIN) bash examples/primary-remote-multinetwork/replay.sh
	ISTHMUS=$(CURDIR)/$(BIN) bash examples/primary-remote-multinetwork/report.sh
	@echo
	@echo "The sandbox keeps running. Explore it with:"
	@echo "  export KUBECONFIG=\$$($(BIN) sandbox kubeconfig --path)"
	@echo "  $${ISTHMUS_CACHE:-/var/cache/isthmus}/kube/v1.37.2/bin/kubectl get pods -A --context cluster-eks"
	@echo "  $(BIN) proxy-config clusters deployment/sleep.multicluster --context cluster-eks"
	@echo "and stop it with: $(BIN) sandbox down"

bench: deps kube image ## measure and write BENCHMARKS.md
	bash bench/run.sh

clean: ## remove build output (the binary cache stays)
	rm -rf bin dist
