"""Performance benchmark of servicekey-operator against the local real kube-apiserver + OpenBao.

Run ``python3 -m bench.run --help``; the figures and how to read them are in ``docs/benchmarks.md``.
"""
