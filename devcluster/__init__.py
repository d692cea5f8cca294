"""The local test and development environment: a real control plane (etcd, kube-apiserver, controller
manager), OpenBao, and optionally a real node (containerd, kubelet, kube-scheduler, kube-proxy) with the
operator's image, all built from the package registries and run on this machine.

It is test infrastructure, not part of the operator: the wheel and the image carry ``servicekey_operator``
only. Run it from a checkout: ``python3 -m devcluster build|up|demo``.
"""
