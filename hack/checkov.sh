#!/usr/bin/env bash
# Security scan of the rendered chart with checkov (PyPI), in a venv of its own so its many pinned
# dependencies never meet the operator's. Waivers, each with its reason, are in .checkov.yaml.
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${SERVICEKEY_CACHE_DIR:-$HOME/.cache/servicekey-operator}"
venv="$cache/checkov-3.2.533"
if [[ ! -x "$venv/bin/checkov" ]]; then
  echo "==> installing checkov 3.2.533 into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --disable-pip-version-check -q 'checkov==3.2.533'
fi
helm="$(python3 -c 'from devcluster.binaries import ensure_binaries; print(ensure_binaries().helm)')"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
# --kube-version: the chart requires >= 1.28, and a helm built from source assumes 1.20 without a cluster.
"$helm" template servicekey-operator charts/servicekey-operator -n servicekey-system --kube-version v1.30.0 \
  > "$out/default.yaml"
"$helm" template servicekey-operator charts/servicekey-operator -n servicekey-system --kube-version v1.30.0 \
  --set networkPolicy.enabled=true --set replicaCount=2 --set peering.enabled=true \
  --set image.digest=sha256:0000000000000000000000000000000000000000000000000000000000000000 \
  > "$out/hardened.yaml"
for render in default hardened; do
  echo "==> checkov: chart render '$render'"
  "$venv/bin/checkov" --config-file .checkov.yaml -f "$out/$render.yaml"
done
