#!/usr/bin/env bash
# Builds the binaries of a single-node Kubernetes from their own Go modules,
# pinned, into a cache outside the clone (keyed by the Kubernetes and Go
# versions), so a warm run builds nothing: kube-apiserver,
# kube-controller-manager, kube-scheduler, kubelet, kube-proxy and kubectl
# from k8s.io/kubernetes, etcd at the version Kubernetes itself requires,
# and CoreDNS (cluster DNS). Prints the folder holding them.
#
# Never run it while cargo builds: two compilers on two cores starve both.
set -euo pipefail

K8S_VERSION=1.34.4
COREDNS_VERSION=1.12.4
GO_VERSION=$(go env GOVERSION)
cache_root=${MESH_K8S_CACHE:-/var/cache/mesh-k8s}
out="$cache_root/k8s-$K8S_VERSION-coredns-$COREDNS_VERSION-$GO_VERSION"
bins=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl etcd coredns pause)

complete() {
  for b in "${bins[@]}"; do [ -x "$out/$b" ] || return 1; done
}
if complete; then
  echo "$out"
  exit 0
fi

say() { printf '%s\n' "$*" >&2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# What an earlier (or interrupted) build made is kept; only the missing
# binaries are built.
if [ -d "$out" ]; then mv "$out" "$out.partial"; fi
mkdir -p "$out.partial"
have() { [ -x "$out.partial/$1" ]; }
export CGO_ENABLED=0 GOFLAGS=-mod=mod

# Kubernetes: a wrapper module that requires k8s.io/kubernetes. Its go.mod
# requires the staging modules (k8s.io/api, …) at v0.0.0 with replaces to
# its own tree; a wrapper must replace each with the published v0.MINOR.PATCH.
say "building Kubernetes v$K8S_VERSION (cold: about 10 minutes on 2 cores)"
mkdir "$work/k8s"
cd "$work/k8s"
go mod init mesh.dev/k8s-node >/dev/null 2>&1
k8s_mod=$(go mod download -json "k8s.io/kubernetes@v$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",*/\1/p')
staging=$(sed -n 's/^\s*\(k8s\.io\/[a-z0-9-]*\) v0\.0\.0$/\1/p' "$k8s_mod" | sort -u)
{
  echo "require k8s.io/kubernetes v$K8S_VERSION"
  for m in $staging; do echo "replace $m => $m v0.${K8S_VERSION#1.}"; done
} >> go.mod
cat > tools.go <<'GO'
//go:build tools

package tools

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
GO
go mod tidy >&2
minor=${K8S_VERSION#1.}; minor=${minor%%.*}
ldflags="-s -w -X k8s.io/component-base/version.gitVersion=v$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor"
for cmd in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl; do
  have "$cmd" && continue
  say "  $cmd"
  go build -trimpath -ldflags "$ldflags" -o "$out.partial/$cmd" "k8s.io/kubernetes/cmd/$cmd"
done
if ! have etcd; then
  say "  etcd ($(go list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3), as Kubernetes requires)"
  go build -trimpath -ldflags "-s -w" -o "$out.partial/etcd" go.etcd.io/etcd/server/v3
fi

# CoreDNS: a module of its own (its Kubernetes client is another version).
if ! have coredns; then
say "building CoreDNS v$COREDNS_VERSION"
mkdir "$work/coredns"
cd "$work/coredns"
go mod init mesh.dev/coredns >/dev/null 2>&1
cat > tools.go <<'GO'
//go:build tools

package tools

import _ "github.com/coredns/coredns"
GO
go get "github.com/coredns/coredns@v$COREDNS_VERSION" >&2
go mod tidy >&2
go build -trimpath -ldflags "-s -w" -o "$out.partial/coredns" github.com/coredns/coredns
fi

# pause: the sandbox's first process (the image is built from it
# locally): waits for a signal and reaps orphans.
if ! have pause; then
say "building pause"
mkdir "$work/pause"
cd "$work/pause"
go mod init mesh.dev/pause >/dev/null 2>&1
cat > main.go <<'GO'
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for s := range sigs {
		if s != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			var ws syscall.WaitStatus
			if pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil); pid <= 0 || err != nil {
				break
			}
		}
	}
}
GO
go build -trimpath -ldflags "-s -w" -o "$out.partial/pause" .
fi

rm -rf "$out"
mv "$out.partial" "$out"
complete
echo "$out"
