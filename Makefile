# clusterip — see README.md.
GO      ?= go
BIN     := bin/clusterctl
LABCTL  := bin/labctl
PKGS    := ./...

.PHONY: all build labctl demo test unit e2e vet fmt fuzz clean bench-failover bench

all: build

build:
	$(GO) build -o $(BIN) ./cmd/clusterctl

# The lab harness for the benchmarks (the tests build their own); not shipped.
labctl:
	$(GO) build -o $(LABCTL) ./test/labctl

# The main job: a throw-away cluster in network namespaces (needs root).
demo: build
	./$(BIN) demo

# Unit tests, then the end-to-end tests in namespaces (those need root).
test: vet
	$(GO) test -count=1 -timeout 9m $(PKGS)

unit:
	$(GO) test -count=1 -short $(PKGS)

e2e:
	$(GO) test -count=1 -timeout 9m -v ./test/

vet:
	@test -z "$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))" || { gofmt -l .; echo "gofmt: files above need formatting"; exit 1; }
	$(GO) vet $(PKGS)

# A short run of every fuzz target.
fuzz:
	@for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
	    $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime 10s $$pkg || exit 1; \
	  done; \
	done

clean:
	rm -rf bin

# Failover, drain, health check and rejoin under load, in a lab (root).
bench-failover: build labctl
	./$(LABCTL) bench-failover --clusterctl $(abspath $(BIN))

# Direct vs the kernel's nftables recipe vs the daemon, side by side (root).
bench: build labctl
	@command -v wrk >/dev/null && command -v iperf3 >/dev/null && command -v nft >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wrk iperf3 nftables; }
	./$(LABCTL) bench --clusterctl $(abspath $(BIN))
