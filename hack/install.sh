#!/usr/bin/env bash
# Install everything a fresh machine lacks: Debian packages, this project with its test extras, and the
# Go-built cluster binaries (kube-apiserver, kube-controller-manager, kubectl, etcd, helm), which are
# compiled once from the Go module proxy and cached outside the repo (~/.cache/servicekey-operator).
set -euo pipefail
cd "$(dirname "$0")/.."

need_debian=()
command -v openssl >/dev/null || need_debian+=(openssl)
command -v go >/dev/null || need_debian+=(golang-go)
if ((${#need_debian[@]})); then
  echo "==> apt-get install ${need_debian[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_debian[@]}"
fi

echo "==> pip install -e .[${SERVICEKEY_EXTRAS:-test}]"
python3 -m pip install --disable-pip-version-check --root-user-action=ignore -q -e ".[${SERVICEKEY_EXTRAS:-test}]"

echo "==> building/caching the cluster binaries (first run: about 15 minutes on 2 cores)"
python3 -m servicekey_operator dev build
