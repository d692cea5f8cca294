#!/usr/bin/env bash
# The README's first command: install, then bring up a local cluster, a node and OpenBao, install the
# operator as a pod with Helm, apply a ServiceKey, and show the example signer pod's JWTs verified by the
# example verifier pod. Ctrl-C cleans up.
set -euo pipefail
cd "$(dirname "$0")/.."
bash hack/install.sh
exec python3 -m devcluster demo
