#!/usr/bin/env bash
# Install everything a fresh machine lacks: Debian packages, this project with its test extras, and the
# Go-built cluster binaries (kube-apiserver, kube-controller-manager, kubectl, etcd, helm; the node's kubelet,
# kube-scheduler, kube-proxy and containerd; promtool, which tests the chart's alerting rules), which are compiled
# once from the Go module proxy and cached outside the repo (~/.cache/servicekey-operator), and the pinned `jose`
# npm package the JWKS verifier tests run under Node (cached there too, in npm/).
set -euo pipefail
cd "$(dirname "$0")/.."

need_debian=()
command -v openssl >/dev/null || need_debian+=(openssl)
command -v go >/dev/null || need_debian+=(golang-go)
# The node of the harness: the OCI runtime, pod networking, packet filter, daemonless image builds, the base
# rootfs of the images, and the static pause binary.
for tool in runc iptables buildah mmdebstrap gcc; do
  command -v "$tool" >/dev/null || need_debian+=("$tool")
done
command -v ip >/dev/null || need_debian+=(iproute2)
# Node and npm: the third-party JWKS client of tests/integration/test_jwks_verifiers.py (jose) runs under Node.
command -v node >/dev/null || need_debian+=(nodejs)
command -v npm >/dev/null || need_debian+=(npm)
[[ -x /usr/lib/cni/bridge ]] || need_debian+=(containernetworking-plugins)
# The import tests' coordinator databases (devcluster/databases.py): real servers, started on loopback by the tests.
compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null || need_debian+=(postgresql)
[[ -x /usr/sbin/mariadbd ]] || need_debian+=(mariadb-server)
# The 3-node OpenBao cluster of the Vault failover tests (devcluster/openbao_cluster.py): HAProxy is its one client
# address, routing to whichever node is active.
[[ -x /usr/sbin/haproxy ]] || need_debian+=(haproxy)
if ((${#need_debian[@]})); then
  echo "==> apt-get install ${need_debian[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_debian[@]}"
fi

echo "==> pip install -e .[${SERVICEKEY_EXTRAS:-test}]"
python3 -m pip install --disable-pip-version-check --root-user-action=ignore -q -e ".[${SERVICEKEY_EXTRAS:-test}]"

echo "==> npm install jose (pinned in devcluster/npm.py) into the cache, outside the repo"
python3 -c 'from devcluster.npm import install_jose; print(install_jose())'

echo "==> building/caching the cluster binaries, promtool and FerretDB (first run: about 15 minutes on 2 cores)"
python3 -m devcluster build
