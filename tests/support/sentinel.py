"""A private Redis Sentinel deployment on free loopback ports: one master, one replica and
three sentinels, with short failure detection so a test sees a failover within seconds.

Uses the same server binary as the rest of the suite (the embedded Valkey runs in sentinel
mode with `--sentinel`; so does Debian's redis-server).
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from runnable_k8s.embedded import free_port, server_binary

MASTER_NAME = "rk8s"
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 3000


class Node:
    """One server process on a fixed port (so a killed master can start again on it)."""

    def __init__(self, folder: Path, name: str, args: list[str]) -> None:
        self.port = free_port()
        self.folder = folder / name
        self.folder.mkdir()
        self.name = name
        self.args = args
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, *extra: str) -> None:
        config = self.folder / "node.conf"
        # A sentinel rewrites its own config file: it must exist and be writable.
        config.write_text("\n".join(self.args) + "\n")
        self.process = subprocess.Popen(
            [server_binary(), str(config), "--port", str(self.port), *extra],
            cwd=self.folder,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 15
        try:
            while time.monotonic() < deadline:
                with contextlib.suppress(redis.RedisError, OSError):
                    if client.ping():
                        return
                time.sleep(0.05)
        finally:
            client.close()
        raise RuntimeError(f"{self.name} did not start on port {self.port}")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_connect_timeout=1, socket_timeout=5)


_DATA = [
    "bind 127.0.0.1",
    'save ""',
    "appendonly no",
    "maxmemory-policy noeviction",
    "loglevel warning",
    "repl-diskless-sync yes",
    "repl-diskless-sync-delay 0",
    # A replica answers reads of keys it may not have yet: everything goes to the master.
    "replica-read-only yes",
]


class SentinelGroup:
    """Master, replica and three sentinels. `url` is the `sentinel://` URL of all three."""

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="rk8s-sentinel-")
        folder = Path(self._dir.name)
        self.nodes = [Node(folder, f"data{i}", _DATA) for i in range(2)]
        self.sentinels: list[Node] = []
        self._folder = folder

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"sentinel://{hosts}/0?master_name={MASTER_NAME}"

    def start(self) -> str:
        first, second = self.nodes
        first.start()
        second.start("--replicaof", "127.0.0.1", str(first.port))
        for index in range(3):
            sentinel = Node(
                self._folder,
                f"sentinel{index}",
                [
                    "bind 127.0.0.1",
                    "loglevel warning",
                    f"sentinel monitor {MASTER_NAME} 127.0.0.1 {first.port} 2",
                    f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}",
                    f"sentinel failover-timeout {MASTER_NAME} {FAILOVER_TIMEOUT_MS}",
                    f"sentinel parallel-syncs {MASTER_NAME} 1",
                ],
            )
            sentinel.start("--sentinel")
            self.sentinels.append(sentinel)
        self.wait_settled(first)
        return self.url

    def master(self) -> Node:
        """The node the sentinels name as master now."""
        client = self.sentinels[0].client()
        try:
            _, port = client.sentinel_get_master_addr_by_name(MASTER_NAME)
        finally:
            client.close()
        return next(n for n in self.nodes if n.port == int(port))

    def wait_settled(self, master: Node, timeout: float = 30.0) -> None:
        """Until every sentinel names `master`, knows the other sentinels, and the master has
        a replica in sync."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            try:
                if self._settled(master):
                    return
            except (redis.RedisError, OSError) as exc:
                last = str(exc)
            time.sleep(0.1)
        raise RuntimeError(f"sentinel group did not settle on {master.name}: {last}")

    def _settled(self, master: Node) -> bool:
        for sentinel in self.sentinels:
            client = sentinel.client()
            try:
                _, port = client.sentinel_get_master_addr_by_name(MASTER_NAME)
                if int(port) != master.port:
                    return False
                if len(client.sentinel_sentinels(MASTER_NAME)) < 2:
                    return False
                replicas = client.sentinel_slaves(MASTER_NAME)
                if not any(r["is_slave"] and "s_down" not in r["flags"] for r in replicas):
                    return False
            finally:
                client.close()
        client = master.client()
        try:
            info = client.info("replication")
            return bool(info.get("connected_slaves")) and info["slave0"]["state"] == "online"
        finally:
            client.close()

    def close(self) -> None:
        for node in [*self.sentinels, *self.nodes]:
            node.kill()
        self._dir.cleanup()
