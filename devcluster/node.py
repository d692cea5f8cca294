"""A real node for the local control plane: containerd, kubelet, kube-scheduler and kube-proxy on this machine.

Pods run in containerd (runc from Debian) on a bridge network (Debian's CNI plugins), see Services through
kube-proxy's iptables rules, and use only images imported into containerd beforehand: the pause image is
pinned as the sandbox image, and every pod says ``imagePullPolicy: Never``, so nothing is ever pulled.

Everything lives below one directory, with three exceptions that the teardown removes explicitly: the
kubelet's cgroups (``/sys/fs/cgroup/*/kubepods``), the CNI plugins' cache (``/var/lib/cni``), and the packet
filter rules. The teardown leaves the machine as the start found it, even after a failed test: pods are
stopped through the kubelet (so their network is released by the CNI), then the processes by PID (the
containerd shims, which outlive containerd, included), then mounts, the bridge, cgroups, rules and sysctls.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import yaml

from devcluster.binaries import NodeBinaries
from devcluster.images import PAUSE_IMAGE, Image
from devcluster.kube import KubernetesControlPlane, node_address, write_kubeconfig
from devcluster.process import ManagedProcess, StartError, free_port

NODE_NAME = "servicekey-node"
POD_CIDR = "10.244.0.0/24"
BRIDGE = "skcni0"
CGROUP_ROOT = Path("/sys/fs/cgroup")
CNI_CACHE = Path("/var/lib/cni")
# Set for the node, put back by the teardown. The kubelet sets the others it needs itself (and they stay).
SYSCTLS = {"net.ipv4.ip_forward": "1", "net.bridge.bridge-nf-call-iptables": "1"}
KUBELET_SYSCTLS = ("vm.overcommit_memory", "kernel.panic", "kernel.panic_on_oops")
IPTABLES_TABLES = ("filter", "nat", "mangle", "raw")


def _run(*argv: str | Path, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(arg) for arg in argv], capture_output=True, text=True, check=check, timeout=timeout)


def _read_sysctl(name: str) -> str | None:
    path = Path("/proc/sys") / name.replace(".", "/")
    return path.read_text().strip() if path.exists() else None


def _write_sysctl(name: str, value: str) -> None:
    path = Path("/proc/sys") / name.replace(".", "/")
    if path.exists():
        path.write_text(value)


class KubernetesNode:
    """One node, ``servicekey-node``, registered with ``control_plane``; pods get addresses from ``POD_CIDR``."""

    def __init__(self, binaries: NodeBinaries, control_plane: KubernetesControlPlane, workdir: Path,
                 images: Sequence[Image]) -> None:
        self.binaries = binaries
        self.control_plane = control_plane
        # Short: unix socket paths are limited to 108 bytes, containerd's shim socket dir to 42.
        self.root = workdir
        self.root.mkdir(parents=True, exist_ok=True)
        self.images = list(images)
        self.address = node_address()
        self.socket = self.root / "containerd.sock"
        self.pki = self.control_plane.pki_dir
        ca = self.control_plane.ca
        kubelet_cert = ca.issue("kubelet", f"system:node:{NODE_NAME}", organizations=("system:nodes",))
        proxy_cert = ca.issue("kube-proxy", "system:kube-proxy")
        scheduler_cert = ca.issue("kube-scheduler", "system:kube-scheduler")
        server, ca_path = control_plane.server, ca.cert_path
        self.kubelet_kubeconfig = write_kubeconfig(self.root / "kubelet.kubeconfig", server, ca_path,
                                                   client_cert=kubelet_cert.cert, client_key=kubelet_cert.key)
        self.proxy_kubeconfig = write_kubeconfig(self.root / "kube-proxy.kubeconfig", server, ca_path,
                                                 client_cert=proxy_cert.cert, client_key=proxy_cert.key)
        self.scheduler_kubeconfig = write_kubeconfig(self.root / "kube-scheduler.kubeconfig", server, ca_path,
                                                     client_cert=scheduler_cert.cert, client_key=scheduler_cert.key)
        self.containerd = ManagedProcess("containerd",
                                         [str(binaries.containerd), f"--config={self._containerd_config()}"],
                                         self.root / "containerd.log",
                                         env={"PATH": f"{binaries.containerd.parent}:/usr/sbin:/usr/bin:/sbin:/bin"})
        self.kubelet = ManagedProcess("kubelet", self._kubelet_argv(), self.root / "kubelet.log")
        self.scheduler = ManagedProcess("kube-scheduler", [
            str(binaries.kube_scheduler), f"--kubeconfig={self.scheduler_kubeconfig}",
            f"--authentication-kubeconfig={self.scheduler_kubeconfig}",
            f"--authorization-kubeconfig={self.scheduler_kubeconfig}", "--leader-elect=false",
            "--bind-address=127.0.0.1", "--secure-port=0", "--v=1"], self.root / "kube-scheduler.log")
        self.proxy = ManagedProcess("kube-proxy", [str(binaries.kube_proxy), f"--config={self._proxy_config()}"],
                                    self.root / "kube-proxy.log")
        self.pause: Image | None = None
        self._sysctls_before: dict[str, str | None] = {}
        self._iptables_before: dict[str, str] = {}
        self._started = False

    # --- configuration ---------------------------------------------------------------------------------------

    def _containerd_config(self) -> Path:
        config = self.root / "containerd.toml"
        config.write_text(f"""version = 3
root = "{self.root / 'containerd'}"
state = "{self.root / 'state'}"

[grpc]
  address = "{self.socket}"

[plugins.'io.containerd.shim.v1.manager']
  socket_dir = "{self.root / 's'}"

[plugins.'io.containerd.nri.v1.nri']
  disable = true

[plugins.'io.containerd.internal.v1.opt']
  path = "{self.root / 'opt'}"

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    # Imported before the kubelet starts; containerd looks it up locally and never pulls it.
    sandbox = "{PAUSE_IMAGE}"

[plugins.'io.containerd.cri.v1.runtime']
  # root here lacks CAP_SYS_RESOURCE: runc fails every sandbox trying to lower oom_score_adj otherwise.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = "{self.binaries.runc}"
        Root = "{self.root / 'runc'}"
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["{self.binaries.cni_plugins}"]
    conf_dir = "{self.root / 'cni'}"
    max_conf_num = 1
""")
        cni = self.root / "cni"
        cni.mkdir(exist_ok=True)
        (cni / "10-servicekey-bridge.conflist").write_text(json.dumps({
            "cniVersion": "1.0.0", "name": "servicekey-bridge",
            "plugins": [
                {"type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": True, "hairpinMode": True,
                 "mtu": self._mtu(),
                 "ipam": {"type": "host-local", "ranges": [[{"subnet": POD_CIDR}]],
                          "routes": [{"dst": "0.0.0.0/0"}], "dataDir": str(self.root / "ipam")}},
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }, indent=2))
        return config

    def _mtu(self) -> int:
        route = _run("ip", "-4", "-o", "route", "get", "1.1.1.1", check=False).stdout.split()
        device = route[route.index("dev") + 1] if "dev" in route else "lo"
        with contextlib.suppress(OSError, ValueError):
            return int(Path(f"/sys/class/net/{device}/mtu").read_text())
        return 1500

    def _kubelet_argv(self) -> list[str]:
        config = self.root / "kubelet.yaml"
        config.write_text(yaml.safe_dump({
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            "containerRuntimeEndpoint": f"unix://{self.socket}",
            # These machines have cgroup v1, which kubelet 1.36 refuses unless told otherwise.
            "failCgroupV1": False, "cgroupDriver": "cgroupfs",
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                               "x509": {"clientCAFile": str(self.control_plane.ca.cert_path)}},
            "authorization": {"mode": "Webhook"},
            "readOnlyPort": 0, "port": 10250, "healthzPort": 0,
            "clusterDomain": "cluster.local", "resolvConf": "/etc/resolv.conf",
            "podLogsDir": str(self.root / "pod-logs"), "failSwapOn": False,
            # A test machine: no image GC (the images cannot be pulled back), no eviction.
            "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
            "evictionHard": {"nodefs.available": "0%", "nodefs.inodesFree": "0%", "imagefs.available": "0%"},
            "oomScoreAdj": 0, "serializeImagePulls": False,
            # The defaults users have: a mounted ConfigMap changes about a minute after the object (sync
            # period 1m with jitter), which the rotation tests measure.
        }))
        return [str(self.binaries.kubelet), f"--config={config}", f"--kubeconfig={self.kubelet_kubeconfig}",
                f"--hostname-override={NODE_NAME}", f"--node-ip={self.address}",
                f"--root-dir={self.root / 'kubelet'}", f"--cert-dir={self.root / 'kubelet-pki'}", "--v=1"]

    def _proxy_config(self) -> Path:
        config = self.root / "kube-proxy.yaml"
        config.write_text(yaml.safe_dump({
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(self.proxy_kubeconfig)},
            "hostnameOverride": NODE_NAME, "mode": "iptables", "clusterCIDR": POD_CIDR,
            "iptables": {"minSyncPeriod": "1s", "localhostNodePorts": False},
            "conntrack": {"maxPerCore": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
            "metricsBindAddress": f"127.0.0.1:{free_port()}", "healthzBindAddress": f"127.0.0.1:{free_port()}",
        }))
        return config

    # --- lifecycle ---------------------------------------------------------------------------------------------

    def ctr(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Run ctr against this node's containerd, in the CRI's namespace."""
        return _run(self.binaries.ctr, f"--address={self.socket}", "--namespace=k8s.io", *args, check=check,
                    timeout=timeout)

    def import_image(self, image: Image, *, pinned: bool = False) -> None:
        """Import a docker-archive into containerd for the kubelet (``pinned``: never garbage-collected)."""
        labels = ["--label", "io.cri-containerd.pinned=pinned"] if pinned else []
        self.ctr("images", "import", "--snapshotter", "overlayfs", *labels, str(image.archive))

    def start(self, pause: Image | None = None) -> None:
        """Start containerd, import the images (``pause`` pinned as the sandbox image; the one of the last start
        when not given), start the kubelet and wait until the node is Ready, then the scheduler and kube-proxy."""
        pause = self.pause = pause or self.pause
        if pause is None:
            raise StartError("the node needs its pause image to start")
        self._started = True
        for table in IPTABLES_TABLES:
            self._iptables_before[table] = _run("iptables-save", "-t", table, check=False).stdout
        for name, value in SYSCTLS.items():
            self._sysctls_before[name] = _read_sysctl(name)
            _write_sysctl(name, value)
        for name in KUBELET_SYSCTLS:
            self._sysctls_before[name] = _read_sysctl(name)
        self.containerd.start()
        self.containerd.wait_ready(lambda: self.ctr("version", timeout=5).returncode == 0, 60)
        self.import_image(pause, pinned=True)
        for image in self.images:
            self.import_image(image)
        self.kubelet.start()
        self.kubelet.wait_ready(self._ready, 180)
        self.scheduler.start()
        self.proxy.start()
        self.proxy.wait_ready(lambda: "-A KUBE-SERVICES" in _run("iptables-save", "-t", "nat").stdout, 60)

    def _ready(self) -> bool:
        reply = self.control_plane.kubectl("get", "node", NODE_NAME, "-o", "json", check=False)
        if reply.returncode != 0:
            return False
        node = json.loads(reply.stdout)
        ready = any(c["type"] == "Ready" and c["status"] == "True" for c in node["status"].get("conditions", []))
        return ready and not any(t.get("key") == "node.kubernetes.io/not-ready" for t in node["spec"].get("taints", []))

    def restart_containerd(self) -> None:
        """Restart the container runtime under running pods (their shims and containers go on)."""
        self.containerd.stop()
        self.containerd.start()
        self.containerd.wait_ready(lambda: self.ctr("version", timeout=5).returncode == 0, 60)

    def stop(self) -> None:
        """Tear everything down and put the machine back as it was (idempotent; runs after failures too)."""
        if not self._started:
            return
        self._started = False
        self._remove_pods()
        for process in (self.proxy, self.scheduler, self.kubelet):
            process.stop()
        self._kill_containers()
        self.containerd.stop()
        self._kill_shims()
        self._unmount()
        _run(self.binaries.kube_proxy, "--cleanup", check=False)
        _run("ip", "link", "delete", BRIDGE, check=False)
        self._restore_iptables()
        self._remove_cgroups()
        shutil.rmtree(CNI_CACHE / "results", ignore_errors=True)
        for name, value in self._sysctls_before.items():
            if value is not None:
                with contextlib.suppress(OSError):
                    _write_sysctl(name, value)

    def _remove_pods(self) -> None:
        """Delete every pod through the API and let the kubelet stop its sandbox (the CNI releases the address,
        the portmap rules) before the kubelet itself stops."""
        with contextlib.suppress(Exception):
            if not self.kubelet.running():
                return
            self.control_plane.kubectl("delete", "pods", "--all", "--all-namespaces", "--grace-period=0",
                                       "--force", "--wait=false", check=False)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and self._sandboxes():
                time.sleep(0.5)

    def _sandboxes(self) -> list[str]:
        reply = self.ctr("tasks", "list", "--quiet", check=False, timeout=10)
        return reply.stdout.split() if reply.returncode == 0 else []

    def _kill_containers(self) -> None:
        with contextlib.suppress(Exception):
            if not self.containerd.running():
                return
            for task in self._sandboxes():
                self.ctr("tasks", "kill", "--signal", "SIGKILL", task, check=False, timeout=10)
            for container in self.ctr("containers", "list", "--quiet", check=False, timeout=10).stdout.split():
                self.ctr("tasks", "delete", "--force", container, check=False, timeout=10)
                self.ctr("containers", "delete", container, check=False, timeout=10)

    def _kill_shims(self) -> None:
        """The shims run in sessions of their own and outlive containerd; find them by their socket."""
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
                if cmdline and cmdline[0].endswith(b"containerd-shim-runc-v2") and str(self.socket).encode() in cmdline:
                    os.kill(int(entry.name), signal.SIGKILL)

    def _unmount(self) -> None:
        """Every mount below the node's directory, deepest first (pod volumes, rootfs, netns, the kubelet's own
        bind mount of its root)."""
        prefix = str(self.root) + "/"
        for _ in range(3):
            targets = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
            mine = sorted((target for target in targets if (target + "/").startswith(prefix)), reverse=True)
            if not mine:
                return
            for target in mine:
                _run("umount", target, check=False)
        for target in mine:
            _run("umount", "-l", target, check=False)

    def _restore_iptables(self) -> None:
        for table, before in self._iptables_before.items():
            if before.strip():
                subprocess.run(["iptables-restore", "-T", table], input=before, capture_output=True, text=True)
            else:
                _run("iptables", "-t", table, "-F", check=False)
                _run("iptables", "-t", table, "-X", check=False)

    def _remove_cgroups(self) -> None:
        for controller in CGROUP_ROOT.iterdir():
            kubepods = controller / "kubepods"
            if not kubepods.is_dir():
                continue
            for directory in sorted((path for path in kubepods.rglob("*") if path.is_dir()),
                                    key=lambda path: len(path.parts), reverse=True):
                with contextlib.suppress(OSError):
                    directory.rmdir()
            with contextlib.suppress(OSError):
                kubepods.rmdir()

    def leftovers(self) -> list[str]:
        """What a stopped node left on the machine (empty when the teardown was complete): processes, mounts,
        the bridge, the packet filter rules, cgroups."""
        found = []
        names = (b"kubelet", b"kube-proxy", b"kube-scheduler", b"containerd", b"containerd-shim-runc-v2")
        for entry in Path("/proc").iterdir():
            with contextlib.suppress(OSError):
                if entry.name.isdigit():
                    command = (entry / "cmdline").read_bytes().split(b"\0")
                    mine = str(self.root).encode() in b" ".join(command)
                    if command and os.path.basename(command[0]) in names and mine:
                        found.append(f"process {entry.name}: {command[0].decode()}")
        prefix = str(self.root) + "/"
        found += [f"mount {line.split()[4]}" for line in Path("/proc/self/mountinfo").read_text().splitlines()
                  if (line.split()[4] + "/").startswith(prefix)]
        if Path(f"/sys/class/net/{BRIDGE}").exists():
            found.append(f"bridge {BRIDGE}")
        rules = _run("iptables-save", check=False).stdout
        found += [f"iptables chain {line.split()[0][1:]}" for line in rules.splitlines()
                  if line.startswith((":KUBE-", ":CNI-"))]
        found += [f"cgroup {path}" for path in CGROUP_ROOT.glob("*/kubepods")]
        return found


def wait_for_pod(control_plane: KubernetesControlPlane, namespace: str, selector: str, timeout: float = 120) -> None:
    """Wait until the pods matching ``selector`` are Ready; raise StartError with their state otherwise."""
    result = control_plane.kubectl("wait", "-n", namespace, "--for=condition=Ready", "pod", "-l", selector,
                                   f"--timeout={int(timeout)}s", check=False)
    if result.returncode != 0:
        described = control_plane.kubectl("describe", "pods", "-n", namespace, "-l", selector, check=False).stdout
        raise StartError(f"pods {namespace}/{selector} not Ready: {result.stderr}\n{described[-3000:]}")


def wait_for_deployment(control_plane: KubernetesControlPlane, namespace: str, name: str,
                        timeout: float = 180) -> None:
    """Wait until the Deployment is rolled out and available; raise StartError with its pods' state otherwise."""
    result = control_plane.kubectl("rollout", "status", "-n", namespace, f"deployment/{name}",
                                   f"--timeout={int(timeout)}s", check=False)
    if result.returncode != 0:
        described = control_plane.kubectl("describe", "pods", "-n", namespace, check=False).stdout
        logs = control_plane.kubectl("logs", "-n", namespace, f"deployment/{name}", "--tail=30", check=False)
        raise StartError(f"deployment {namespace}/{name} not available: {result.stderr}\n{described[-3000:]}\n"
                         f"{logs.stdout}{logs.stderr}")
