#!/usr/bin/env bash
# Builds promtool from Prometheus' own Go module (cached outside the
# clone); prints the binary's path.
#
# Debian's prometheus package leaves Kubernetes service discovery out, so
# its promtool refuses the install bundle's scrape configuration; the
# upstream build checks it as a cluster's Prometheus will read it.
set -euo pipefail
exec "$(dirname "$0")/../go-tool.sh" "${MESH_PROMETHEUS_CACHE:-/var/cache/mesh-prometheus}" \
  github.com/prometheus/prometheus 0.316.0 github.com/prometheus/prometheus/cmd/promtool promtool
