#!/usr/bin/env bash
# Builds Jaeger, the tracing backend the tests send spans to, from its own
# Go module (cached outside the clone); prints the binary's path.
#
# `cmd/jaeger` is the all-in-one collector and query service: it takes
# OTLP (gRPC 4317, HTTP 4318) and Zipkin v2 (9411) and answers queries on
# 16686 (`/api/traces`), keeping spans in memory.
#
# v1.75.0 is the newest release the module registry here approves (the
# issue named v1.76.0; the registry serves it but marks it unapproved).
set -euo pipefail
exec "$(dirname "$0")/../go-tool.sh" "${MESH_JAEGER_CACHE:-/var/cache/mesh-jaeger}" \
  github.com/jaegertracing/jaeger 1.75.0 github.com/jaegertracing/jaeger/cmd/jaeger jaeger
