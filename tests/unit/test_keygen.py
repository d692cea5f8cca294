"""How many RSA keygen workers the operator forks: the container's CPU limit decides, not the node's cores.
The cgroup filesystem is the one boundary faked here (a directory laid out as the kernel lays it out)."""

from __future__ import annotations

from pathlib import Path

import pytest

from servicekey_operator.keygen import cgroup_cpu_limit


def _cgroup(tmp_path: Path, membership: str, files: dict[str, str]) -> tuple[Path, Path]:
    root = tmp_path / "sys-fs-cgroup"
    for relative, content in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(content)
    self_cgroup = tmp_path / "proc-self-cgroup"
    self_cgroup.write_text(membership)
    return root, self_cgroup


@pytest.mark.parametrize(("membership", "files", "cpus"), [
    ("0::/\n", {"cpu.max": "150000 100000\n"}, 1.5),
    ("0::/\n", {"cpu.max": "max 100000\n"}, None),
    ("0::/kubepods/pod1/c1\n", {"kubepods/pod1/c1/cpu.max": "200000 100000\n"}, 2.0),
    ("4:cpu,cpuacct:/\n0::/\n", {"cpu/cpu.cfs_quota_us": "50000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 0.5),
    ("4:cpu,cpuacct:/\n", {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
    ("4:cpu,cpuacct:/kubepods/x\n", {"cpu,cpuacct/kubepods/x/cpu.cfs_quota_us": "400000\n",
                                     "cpu,cpuacct/kubepods/x/cpu.cfs_period_us": "100000\n"}, 4.0),
    ("", {}, None),
    ("0::/\n", {"cpu.max": "garbage\n"}, None),
], ids=["v2-limit", "v2-unlimited", "v2-nested", "v1-limit", "v1-unlimited", "v1-nested", "no-cgroup", "unreadable"])
def test_the_cpu_limit_comes_from_the_processs_own_cgroup(tmp_path, membership, files, cpus):
    root, self_cgroup = _cgroup(tmp_path, membership, files)

    assert cgroup_cpu_limit(root, self_cgroup) == cpus
