#!/usr/bin/env bash
# The README's first command: install, then bring up a local cluster + OpenBao, run the operator,
# apply a ServiceKey and show its JWKS and a JWT verified against it. Ctrl-C cleans up.
set -euo pipefail
cd "$(dirname "$0")/.."
bash hack/install.sh
exec python3 -m servicekey_operator dev demo
