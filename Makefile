# clusterip — see README.md.
GO      ?= go
BIN     := bin/clusterctl
LABCTL  := bin/labctl
PKGS    := ./...

# The version: the nearest tag (v1.2.3, v1.2.3-4-gabcdef), else the commit.
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo devel)
LDFLAGS := -X github.com/clusterip/clusterip/internal/buildinfo.version=$(VERSION)

# make install: PREFIX for the program and its files, DESTDIR for staging.
PREFIX     ?= /usr/local
DESTDIR    ?=
SYSCONFDIR ?= /etc
UNITDIR    ?= $(PREFIX)/lib/systemd/system
DOCDIR     ?= $(PREFIX)/share/doc/clusterip
# Pacemaker looks for resource agents here, whatever PREFIX is.
OCFDIR     ?= /usr/lib/ocf/resource.d/clusterip

# The tools the tests use (root, in network namespaces) and their packages.
TEST_TOOLS := ip:iproute2 nsenter:util-linux unshare:util-linux setpriv:util-linux \
              ping:iputils-ping curl:curl bash:bash dpkg-deb:dpkg nft:nftables \
              ocf-tester:resource-agents xmllint:libxml2-utils
# Files the tests use that are not commands on the PATH, and their packages.
TEST_FILES := /usr/lib/ipsec/charon:strongswan-charon \
              /usr/lib/ipsec/plugins/libstrongswan-ha.so:libcharon-extra-plugins

.PHONY: all build labctl docs demo test deps unit e2e vet fmt fuzz clean bench-failover bench bench-scale install uninstall deb

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/clusterctl

# The lab harness for the benchmarks (the tests build their own); not shipped.
labctl:
	$(GO) build -o $(LABCTL) ./test/labctl

# Man pages and shell completions, generated from the command tree.
docs:
	rm -rf build/docs
	$(GO) run -ldflags "$(LDFLAGS)" ./tools/gendocs build/docs

# The main job: a throw-away cluster in network namespaces (needs root).
demo: build
	./$(BIN) demo

# Unit tests, then the end-to-end tests in namespaces (those need root).
test: deps vet
	$(GO) test -count=1 -timeout 9m $(PKGS)

# What the tests need: installed with apt-get when run as root, else named.
deps:
	@missing=""; for t in $(TEST_TOOLS); do \
	  command -v $${t%%:*} >/dev/null 2>&1 || missing="$$missing $${t#*:}"; \
	done; \
	for t in $(TEST_FILES); do \
	  [ -e $${t%%:*} ] || missing="$$missing $${t#*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "deps: installing$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	  else \
	    echo "deps: the tests need these packages:$$missing (as root: apt-get install$$missing)"; exit 1; \
	  fi; \
	fi

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
	rm -rf bin build

# The program, its unit, man pages, completions, documentation and example
# configuration (kept if present).
install: build docs
	install -D -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/sbin/clusterctl
	install -d -m 0755 $(DESTDIR)$(UNITDIR)
	sed 's|/usr/sbin/clusterctl|$(PREFIX)/sbin/clusterctl|; s|/etc/|$(SYSCONFDIR)/|g' dist/clusterip.service > $(DESTDIR)$(UNITDIR)/clusterip.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/clusterip.service
	install -d -m 0755 $(DESTDIR)$(PREFIX)/share/man/man8
	install -m 0644 build/docs/man8/*.8 $(DESTDIR)$(PREFIX)/share/man/man8/
	install -D -m 0644 build/docs/completions/clusterctl.bash $(DESTDIR)$(PREFIX)/share/bash-completion/completions/clusterctl
	install -D -m 0644 build/docs/completions/_clusterctl $(DESTDIR)$(PREFIX)/share/zsh/vendor-completions/_clusterctl
	install -D -m 0644 build/docs/completions/clusterctl.fish $(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d/clusterctl.fish
	install -D -m 0755 dist/ocf/ClusterIP $(DESTDIR)$(OCFDIR)/ClusterIP
	install -D -m 0755 dist/strongswan/charon-clusterip $(DESTDIR)$(PREFIX)/lib/clusterip/charon-clusterip
	install -D -m 0644 README.md $(DESTDIR)$(DOCDIR)/README.md
	install -D -m 0644 dist/monitoring/grafana-dashboard.json $(DESTDIR)$(DOCDIR)/examples/grafana-dashboard.json
	install -D -m 0644 dist/monitoring/alerts.yml $(DESTDIR)$(DOCDIR)/examples/alerts.yml
	install -d -m 0755 $(DESTDIR)$(SYSCONFDIR)/clusterip $(DESTDIR)$(SYSCONFDIR)/default
	test -e $(DESTDIR)$(SYSCONFDIR)/clusterip/clusters.conf || install -m 0644 dist/clusters.conf $(DESTDIR)$(SYSCONFDIR)/clusterip/clusters.conf
	test -e $(DESTDIR)$(SYSCONFDIR)/default/clusterip || install -m 0644 dist/clusterip.default $(DESTDIR)$(SYSCONFDIR)/default/clusterip

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/sbin/clusterctl $(DESTDIR)$(UNITDIR)/clusterip.service \
	  $(DESTDIR)$(PREFIX)/share/man/man8/clusterctl*.8 \
	  $(DESTDIR)$(PREFIX)/share/bash-completion/completions/clusterctl \
	  $(DESTDIR)$(PREFIX)/share/zsh/vendor-completions/_clusterctl \
	  $(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d/clusterctl.fish \
	  $(DESTDIR)$(OCFDIR)/ClusterIP
	rm -rf $(DESTDIR)$(DOCDIR) $(DESTDIR)$(PREFIX)/lib/clusterip

# A Debian package of the same: build/clusterip_VERSION_ARCH.deb.
deb:
	VERSION=$(VERSION) GO=$(GO) dist/debian/build

# Failover, drain, health check and rejoin under load, in a lab (root).
bench-failover: build labctl
	./$(LABCTL) bench-failover --clusterctl $(abspath $(BIN))

# Many VIPs on one daemon, and many nodes in one cluster (root; minutes).
bench-scale: build labctl
	./$(LABCTL) bench-scale --clusterctl $(abspath $(BIN))

# Direct vs the kernel's nftables recipe vs the daemon, side by side (root).
bench: build labctl
	@command -v wrk >/dev/null && command -v iperf3 >/dev/null && command -v nft >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wrk iperf3 nftables; }
	./$(LABCTL) bench --clusterctl $(abspath $(BIN))
