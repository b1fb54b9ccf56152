"""A real multi-node Ray cluster on loopback addresses, for the tests and benchmarks.

Ray's gcs_server and raylets listen on every interface (`*:port`), whatever
`--node-ip-address` says, and a driver may advertise the machine's network address. So the
cluster runs in a private network namespace whose only interface is `lo`: the calling
thread enters it (`unshare(CLONE_NEWNET)`), every process it starts (the `ray start`
nodes, their workers, driver subprocesses) inherits it, and nothing can listen or connect
anywhere but 127.0.0.0/8; `check_loopback_only` verifies that with `ss`. Each node gets
its own loopback address (127.0.0.2 for the head, 127.0.0.3, ... for the others) so Ray
sees several nodes, and its own custom resources so work can be sent to all of them.

`stop()` ends exactly the processes inside that namespace (never `ray stop`, which ends
every Ray process of the machine, other people's included) and returns the thread to the
namespace it came from. Needs CAP_SYS_ADMIN (root, as in CI).

    with LoopbackCluster(Path("/tmp/x")) as cluster:   # two nodes, 1 CPU each
        cluster.connect()                                # ray.init, all nodes up
        ...
"""
from __future__ import annotations

import ctypes
import fcntl
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

CLONE_NEWNET = 0x40000000
_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1
OBJECT_STORE_BYTES = 100 << 20  # Ray's floor is 75 MiB; tiny clips need little


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def enter_private_netns() -> int:
    """Move the calling thread into a new network namespace with `lo` up; return a file
    descriptor of the namespace it was in (for `leave_netns`). OSError if not permitted."""
    original = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    if _libc().unshare(CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        os.close(original)
        raise OSError(err, f"unshare(CLONE_NEWNET): {os.strerror(err)} (needs root / CAP_SYS_ADMIN)")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # `ip link set lo up`
        flags = struct.unpack("16sH", fcntl.ioctl(s, _SIOCGIFFLAGS, struct.pack("16sH", b"lo", 0))[:18])[1]
        fcntl.ioctl(s, _SIOCSIFFLAGS, struct.pack("16sH", b"lo", flags | _IFF_UP))
    return original


def leave_netns(original: int) -> None:
    """Return the calling thread to the namespace `original` (from `enter_private_netns`)."""
    try:
        if _libc().setns(original, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns: {os.strerror(err)}")
    finally:
        os.close(original)


def netns_id(pid: int | str = "thread-self") -> str | None:
    """'net:[inode]' of a process (or of the calling thread); None if it is gone."""
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return None


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class Sockets:
    """TCP sockets of the namespace: (local address, port, process) listening, and
    (local, peer) pairs connected."""

    listening: list[tuple[str, int, str]] = field(default_factory=list)
    connected: list[tuple[str, str]] = field(default_factory=list)


def _host(addr: str) -> str:
    host = addr.rsplit(":", 1)[0].strip("[]")
    return host[7:] if host.startswith("::ffff:") else host


def is_loopback(host: str) -> bool:
    return host.startswith("127.") or host == "::1"


class LoopbackCluster:
    """A head node plus `len(node_ips) - 1` more node processes, in a private network
    namespace (see the module doc). resources[i]: node i's custom resources."""

    def __init__(
        self,
        root: Path,
        *,
        node_ips: tuple[str, ...] = ("127.0.0.2", "127.0.0.3"),
        num_cpus: int = 1,
        resources: tuple[dict, ...] | None = None,
        object_store_bytes: int = OBJECT_STORE_BYTES,
    ):
        self.root = Path(root)
        self.node_ips = node_ips
        self.num_cpus = num_cpus
        self.resources = resources or tuple({"vsr_worker": 1, f"vsr_node_{k}": 1} for k in range(len(node_ips)))
        self.object_store_bytes = object_store_bytes
        self.address = ""
        self.start_seconds: list[float] = []  # per node, as `ray start` took
        self._original_ns: int | None = None
        self._ns: str | None = None

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> "LoopbackCluster":
        self.root.mkdir(parents=True, exist_ok=True)
        self._original_ns = enter_private_netns()
        self._ns = netns_id()
        try:
            port = free_port(self.node_ips[0])
            self.address = f"{self.node_ips[0]}:{port}"
            for k, ip in enumerate(self.node_ips):
                head = ["--head", "--port", str(port), "--include-dashboard", "false"] if k == 0 else ["--address", self.address]
                self._ray_start(k, [*head, "--node-ip-address", ip])
        except BaseException:
            self.stop()
            raise
        return self

    def _ray_start(self, k: int, args: list[str]) -> None:
        cmd = [
            sys.executable, "-m", "ray.scripts.scripts", "start", *args,
            "--num-cpus", str(self.num_cpus),
            "--resources", json.dumps(self.resources[k]),
            "--object-store-memory", str(self.object_store_bytes),
            "--temp-dir", str(self.root),
            "--disable-usage-stats",
        ]
        t0 = time.perf_counter()
        # its own session: the node's daemons keep this process group, whatever happens to us
        home = self.root / "home"
        home.mkdir(exist_ok=True)
        done = subprocess.run(cmd, env=cluster_env(home), capture_output=True, text=True, start_new_session=True,
                              timeout=180)
        if done.returncode and "timed out during startup" not in done.stderr + done.stdout:
            raise RuntimeError(f"ray start (node {k}) failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        # `ray start` gives a raylet 30 s to register, hard-coded; on a loaded machine it
        # can take longer, and the raylet it started goes on: `connect` waits for it
        self.start_seconds.append(time.perf_counter() - t0)

    def stop(self) -> None:
        """End every process of the namespace (SIGTERM, then SIGKILL after 3 s), then
        return this thread to its original namespace."""
        if self._ns is not None:
            pids = self.pids()
            for pid in pids:
                _signal(pid, signal.SIGTERM)
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline and any(_alive(p) for p in pids):
                time.sleep(0.1)
            for pid in self.pids():
                _signal(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and any(_alive(p) for p in pids):
                time.sleep(0.1)
        if self._original_ns is not None:
            leave_netns(self._original_ns)
            self._original_ns = None

    def connect(self, timeout: float = 180.0) -> float:
        """`ray.init` this process as a driver of the cluster and wait until every node is
        alive; returns the seconds that took."""
        import ray

        t0 = time.perf_counter()
        ray.init(address=self.address, logging_level="WARNING", log_to_driver=False)
        while True:
            alive = {n["NodeManagerAddress"] for n in ray.nodes() if n.get("Alive")}
            if alive >= set(self.node_ips):
                return time.perf_counter() - t0
            if time.perf_counter() - t0 > timeout:
                raise RuntimeError(f"nodes {sorted(set(self.node_ips) - alive)} did not join within {timeout:.0f} s")
            time.sleep(0.5)

    def __enter__(self) -> "LoopbackCluster":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what runs where -----------------------------------------------------------------
    def pids(self) -> list[int]:
        """Every process in the cluster's namespace except this one (live ones; zombies
        have no namespace link)."""
        me = os.getpid()
        out = []
        for name in os.listdir("/proc"):
            if name.isdigit() and int(name) != me and netns_id(name) == self._ns:
                out.append(int(name))
        return out

    def sockets(self) -> Sockets:
        """TCP sockets in the namespace, from `ss` (run inside it)."""
        found = Sockets()
        listen = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
        for line in listen.splitlines():
            cols = line.split()
            if len(cols) >= 4:
                local = cols[3]
                found.listening.append((_host(local), int(local.rsplit(":", 1)[1]), " ".join(cols[5:])))
        conns = subprocess.run(["ss", "-tnH", "state", "established"], capture_output=True, text=True, check=True).stdout
        for line in conns.splitlines():
            cols = line.split()
            if len(cols) >= 4:
                found.connected.append((_host(cols[2]), _host(cols[3])))
        return found

    def check_loopback_only(self) -> Sockets:
        """AssertionError unless the namespace has no interface but `lo`, every socket
        listening is on a loopback address or on `*` (which here can only mean lo), and
        every connection joins two loopback addresses. Returns what it saw."""
        interfaces = [name for _, name in socket.if_nameindex()]
        assert interfaces == ["lo"], f"the cluster's namespace has interfaces {interfaces}, expected only lo"
        seen = self.sockets()
        assert seen.listening, "no listening socket found: is the cluster running in this namespace?"
        for host, port, proc in seen.listening:
            assert is_loopback(host) or host in ("*", "0.0.0.0", "::"), f"{proc} listens on {host}:{port}"
        for local, peer in seen.connected:
            assert is_loopback(local) and is_loopback(peer), f"connection {local} -> {peer} leaves loopback"
        return seen


def cluster_env(home: Path) -> dict[str, str]:
    """The environment of the cluster's processes: no usage reports, this interpreter's
    packages, and `home` as HOME: nothing of the developer's ~/.ray (a token file there,
    left by a cluster with token authentication, makes `ray start` of a second node fail
    with InvalidAuthToken although this cluster runs without authentication)."""
    env = dict(os.environ)
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env["HOME"] = str(home)
    for name in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        env.pop(name, None)
    return env


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
