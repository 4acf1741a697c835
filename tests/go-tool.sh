#!/usr/bin/env bash
# Builds one program of a Go module, pinned, into a cache outside the
# clone keyed by the module's and Go's versions, so a warm run builds
# nothing; prints the binary's path. The peers the tests run beside the
# mesh come this way (tests/jaeger/build.sh, tests/prometheus/build.sh).
#
#   tests/go-tool.sh CACHE_DIR MODULE VERSION PACKAGE BINARY_NAME
#
# Never run it while cargo builds: two compilers on two cores starve both.
set -euo pipefail
cache=$1 module=$2 version=$3 package=$4 name=$5
out="$cache/$(basename "$module")-$version-$(go env GOVERSION)/$name"
if [ -x "$out" ]; then
  echo "$out"
  exit 0
fi
printf 'building %s from %s v%s (cold: a few minutes on 2 cores)\n' "$name" "$module" "$version" >&2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
export CGO_ENABLED=0 GOFLAGS=-mod=mod
go mod init "mesh.dev/$name" >/dev/null 2>&1
go get "$module@v$version" >&2
mkdir -p "$(dirname "$out")"
go build -trimpath -ldflags='-s -w' -o "$out.partial" "$package" >&2
mv "$out.partial" "$out"
echo "$out"
