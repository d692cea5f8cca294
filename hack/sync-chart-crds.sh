#!/usr/bin/env bash
# Refresh the chart's copy of the ServiceKey CRD from the single source of truth.
#
# Helm reads only files inside the chart, so charts/servicekey-operator/crds/ holds a byte-for-byte
# copy of crds/servicekey.io_servicekeys.yaml. tests/e2e/test_chart_render.py fails when the two
# drift; run this script (then hack/render-deploy.sh, whose output embeds the CRD) after editing it.
#
#   hack/sync-chart-crds.sh           copy the CRD into the chart
#   hack/sync-chart-crds.sh --check   only report drift (exit 1), change nothing
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source_crd="${repo_root}/crds/servicekey.io_servicekeys.yaml"
chart_crd="${repo_root}/charts/servicekey-operator/crds/servicekey.io_servicekeys.yaml"

if [[ ! -f "${source_crd}" ]]; then
  echo "sync-chart-crds: ${source_crd} does not exist" >&2
  exit 1
fi

if [[ "${1:-}" == "--check" ]]; then
  if cmp -s "${source_crd}" "${chart_crd}"; then
    echo "sync-chart-crds: chart CRD is up to date"
    exit 0
  fi
  echo "sync-chart-crds: ${chart_crd} differs from ${source_crd}; run hack/sync-chart-crds.sh" >&2
  exit 1
fi

mkdir -p "$(dirname "${chart_crd}")"
cp "${source_crd}" "${chart_crd}"
echo "sync-chart-crds: copied crds/servicekey.io_servicekeys.yaml into the chart"
