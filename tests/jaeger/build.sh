#!/usr/bin/env bash
# Builds Jaeger (the tracing backend the tests send spans to) from its own Go
# module, pinned, into a cache outside the clone keyed by the Jaeger and Go
# versions, so a warm run builds nothing. Prints the binary's path.
#
# `cmd/jaeger` is the all-in-one collector and query service: it takes
# OTLP (gRPC 4317, HTTP 4318) and Zipkin v2 (9411) and answers queries on
# 16686 (`/api/traces`), keeping spans in memory.
#
# Never run it while cargo builds: two compilers on two cores starve both.
set -euo pipefail

# v1.75.0 is the newest release the module registry here approves (the
# issue named v1.76.0; the registry serves it but marks it unapproved).
JAEGER_VERSION=1.75.0
GO_VERSION=$(go env GOVERSION)
cache_root=${MESH_JAEGER_CACHE:-/var/cache/mesh-jaeger}
out="$cache_root/jaeger-$JAEGER_VERSION-$GO_VERSION/jaeger"
if [ -x "$out" ]; then
  echo "$out"
  exit 0
fi

printf 'building Jaeger v%s (cold: a few minutes on 2 cores)\n' "$JAEGER_VERSION" >&2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
export CGO_ENABLED=0 GOFLAGS=-mod=mod
go mod init mesh.dev/jaeger >/dev/null 2>&1
go get "github.com/jaegertracing/jaeger@v$JAEGER_VERSION" >&2
mkdir -p "$(dirname "$out")"
go build -trimpath -ldflags='-s -w' -o "$out.partial" github.com/jaegertracing/jaeger/cmd/jaeger >&2
mv "$out.partial" "$out"
echo "$out"
