# The suite's front door. `make test` is what CI runs (as root); `make demo` plays the seed
# scenario. Kernel tests are `#[ignore]`d so `make unit` needs no root; `make conformance`
# runs exactly those, against the release binaries.

CARGO      ?= cargo
PREFIX     ?= /opt/cni/bin
BIN_DIR    := $(CURDIR)/target/release
PLUGINS    := bridge internal-bridge portmap isolation firewall tuning host-local dnsname etcd-ipam overlay \
              loopback bandwidth ptp macvlan host-device tap netpol
TOOLS      := cnirs cnirs-reconcile cnirs-agent
# IPAM static and dhcp (with its daemon: `dhcp daemon`); the image's entrypoint.
PLUGINS    += static dhcp
TOOLS      += cnirs-install
VERSION    := $(shell sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' Cargo.toml)
IMAGE      ?= localhost/cnirs:$(VERSION)
CNITOOL    := conformance/cnitool/bin/cnitool
# Kernel tests mostly wait on the kernel and on child processes: run several at once.
KTHREADS   ?= 6

.PHONY: all deps build cnitool unit conformance test lint fmt demo demo-overlay bench bench-overlay bench-netpol bench-scale soak install clean deb image print-bins

all: build

# Debian packages the kernel tests, the demo and the bench need (no-op when all are there).
deps:
	scripts/install-deps.sh --if-missing

# The per-pod plugins are linked statically (glibc's crt-static): a process start without the
# dynamic loader is ~0.3 ms shorter, paid by every plugin of every ADD/CHECK/DEL. They are built
# for the host triple explicitly so build scripts and proc-macros stay dynamic, then linked into
# target/release over the dynamic copies. The rest (etcd clients, resolver, admin tools) stay
# dynamic: they resolve host names through glibc's NSS.
HOST_TRIPLE := $(shell rustc -vV 2>/dev/null | sed -n 's/^host: //p')
TRIPLE_ENV  := $(shell echo '$(HOST_TRIPLE)' | tr 'a-z-' 'A-Z_')
STATIC_BINS := bridge internal-bridge host-local portmap isolation firewall tuning \
               loopback bandwidth ptp macvlan host-device tap netpol
# cnirs-install runs as the entrypoint of a FROM-scratch image: it must be static.
STATIC_BINS += static dhcp cnirs-install
# Cargo packages of the static binaries (`static` is a Rust keyword: its package is static-ipam;
# the netpol plugin's is netpol-plugin, next to the netpol library).
STATIC_PKGS  = $(patsubst netpol,netpol-plugin,$(patsubst static,static-ipam,$(STATIC_BINS)))

build:
	$(CARGO) build --release --workspace --bins
	CARGO_TARGET_$(TRIPLE_ENV)_RUSTFLAGS="-C target-feature=+crt-static" \
		$(CARGO) build --release --target $(HOST_TRIPLE) --bins $(addprefix -p ,$(STATIC_PKGS))
	for b in $(STATIC_BINS); do ln -f target/$(HOST_TRIPLE)/release/$$b target/release/$$b; done

cnitool: $(CNITOOL)

$(CNITOOL): conformance/cnitool/main.go conformance/cnitool/build.sh
	scripts/install-deps.sh --if-missing
	conformance/cnitool/build.sh

# No root needed; some contract tests run the release binaries (VERSION, bad input).
unit: build
	CNIRS_BIN_DIR=$(BIN_DIR) $(CARGO) test --workspace

# The CRI benchmark (tests/cri_bench.rs) is make bench's, not a test: skipped here.
conformance: deps build cnitool
	CNIRS_BIN_DIR=$(BIN_DIR) CNITOOL=$(CURDIR)/$(CNITOOL) \
		$(CARGO) test --workspace -- --ignored --test-threads=$(KTHREADS) \
		--skip cri_run_and_stop_pod_sandbox_ours_against_the_reference

test: lint unit conformance

lint:
	scripts/check-size.sh
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

demo: deps build cnitool
	CNIRS_BIN_DIR=$(BIN_DIR) CNITOOL=$(CURDIR)/$(CNITOOL) demo/run.sh

# Three simulated hosts (netns) on an underlay, etcd on each, the agent on each: services on
# different hosts talk over the overlay; an internal overlay stays sealed. Prints the matrix.
demo-overlay: deps build cnitool
	CNIRS_BIN_DIR=$(BIN_DIR) CNITOOL=$(CURDIR)/$(CNITOOL) demo/overlay.sh

# The bridge chain against the reference, then the overlay section and the CRI rows (pod start
# and stop through containerd, ours against the reference: under the global lock, which a caller
# that already holds it turns off with GLOBAL_LOCK=) appended to the summary.
GLOBAL_LOCK ?= flock /tmp/cnirs-global.lock
bench: deps build cnitool
	CNIRS_BIN_DIR=$(BIN_DIR) CNITOOL=$(CURDIR)/$(CNITOOL) bench/run.sh
	CNIRS_BIN_DIR=$(BIN_DIR) CNITOOL=$(CURDIR)/$(CNITOOL) bench/overlay.sh
	{ echo; cat target/bench/overlay.md; } >> target/bench/summary.md
	CNIRS_BIN_DIR=$(BIN_DIR) bench/netpol.sh
	{ echo; cat target/bench/netpol.md; } >> target/bench/summary.md
	$(GLOBAL_LOCK) $(CARGO) test -p conformance --test cri_bench -- --ignored --nocapture
	{ echo; cat target/bench/cri.md; } >> target/bench/summary.md

# ADD p50 of an overlay pod on 3 simulated hosts vs a local bridge pod; ADD-to-reachability.
bench-overlay: deps build cnitool
	CNIRS_BIN_DIR=$(BIN_DIR) CNITOOL=$(CURDIR)/$(CNITOOL) bench/overlay.sh

# NetworkPolicy on one host: netpol ADD with 0 and 200 policies, apply-to-enforcement with 500
# pods and 200 policies, the table's size (docs/netpol.md). Writes target/bench/netpol.md.
bench-netpol: build
	CNIRS_BIN_DIR=$(BIN_DIR) bench/netpol.sh

# The overlay's control plane at cluster scale (docs/scale.md): a 3-member etcd, N simulated
# hosts (real agent loop and overlay/etcd-ipam ADD/DEL, fake kernels) and one real host.
# Knobs: N (1000), P (110), CHURN (100/s), DURATION (60 s). Writes target/bench/scale.json.
bench-scale: deps build
	CNIRS_BIN_DIR=$(BIN_DIR) bench/scale.sh

# The long reliability run: 2,000 ADD/DEL over 16 workers and 200 SIGKILLs mid-ADD (~3 min).
soak: deps build cnitool
	CNIRS_BIN_DIR=$(BIN_DIR) CNITOOL=$(CURDIR)/$(CNITOOL) CNIRS_SOAK_OPS=2000 CNIRS_CRASH_POINTS=200 \
		$(CARGO) test -p conformance --test reliability -- --ignored --test-threads=1 --nocapture

install: build
	install -d $(DESTDIR)$(PREFIX)
	for p in $(PLUGINS) $(TOOLS); do install -m 0755 $(BIN_DIR)/$$p $(DESTDIR)$(PREFIX)/$$p; done
	install -D -m 0644 contrib/systemd/cnirs-reconcile.service \
		$(DESTDIR)/etc/systemd/system/cnirs-reconcile.service
	install -D -m 0644 contrib/systemd/cnirs-watch.service \
		$(DESTDIR)/etc/systemd/system/cnirs-watch.service
	install -D -m 0644 contrib/systemd/cnirs-agent.service \
		$(DESTDIR)/etc/systemd/system/cnirs-agent.service
	install -D -m 0644 contrib/systemd/cnirs-dhcp.service \
		$(DESTDIR)/etc/systemd/system/cnirs-dhcp.service
	install -D -m 0644 contrib/systemd/cnirs-dhcp.socket \
		$(DESTDIR)/etc/systemd/system/cnirs-dhcp.socket

# Every binary the package and the image carry: the plugins, then the tools (one line each;
# conformance/tests/package.rs reads them).
print-bins:
	@echo $(PLUGINS)
	@echo $(TOOLS)

# target/deb/cnirs_<version>_<arch>.deb, with dpkg-deb only (offline): docs/install.md.
deb: build
	scripts/build-deb.sh target/deb $(BIN_DIR) $(PLUGINS) $(TOOLS)

# A FROM-scratch OCI image in podman's local store ($(IMAGE)), nothing pulled: docs/install.md.
image: build
	scripts/build-image.sh $(IMAGE) $(BIN_DIR) $(PLUGINS) $(TOOLS)

clean:
	$(CARGO) clean
	rm -f $(CNITOOL)
