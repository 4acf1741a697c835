#!/usr/bin/env bash
# Builds promtool from Prometheus' own Go module, pinned, into a cache
# outside the clone keyed by the Prometheus and Go versions, so a warm run
# builds nothing. Prints the binary's path.
#
# Debian's prometheus package leaves Kubernetes service discovery out, so
# its promtool refuses the install bundle's scrape configuration; the
# upstream build checks it as a cluster's Prometheus will read it.
#
# Never run it while cargo builds: two compilers on two cores starve both.
set -euo pipefail

PROMETHEUS_MODULE_VERSION=0.316.0
GO_VERSION=$(go env GOVERSION)
cache_root=${MESH_PROMETHEUS_CACHE:-/var/cache/mesh-prometheus}
out="$cache_root/prometheus-$PROMETHEUS_MODULE_VERSION-$GO_VERSION/promtool"
if [ -x "$out" ]; then
  echo "$out"
  exit 0
fi

printf 'building promtool (Prometheus module v%s; cold: a few minutes on 2 cores)\n' "$PROMETHEUS_MODULE_VERSION" >&2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
export CGO_ENABLED=0 GOFLAGS=-mod=mod
go mod init mesh.dev/promtool >/dev/null 2>&1
go get "github.com/prometheus/prometheus@v$PROMETHEUS_MODULE_VERSION" >&2
mkdir -p "$(dirname "$out")"
go build -trimpath -ldflags='-s -w' -o "$out.partial" github.com/prometheus/prometheus/cmd/promtool >&2
mv "$out.partial" "$out"
echo "$out"
