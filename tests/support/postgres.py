"""A private PostgreSQL server for the tests of LangGraph's Postgres checkpointer.

Started from the server binaries of Debian's `postgresql` package (not on PATH: in its versioned
lib folder) into a temporary folder, on a free loopback port. `initdb` refuses to run as root,
so as root the server runs as the unprivileged `postgres` user the package creates, in a folder
owned by that user.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import NoReturn

import pytest

SERVER_BINARIES = ("initdb", "pg_ctl")
INSTALL_HINT = "install Debian's `postgresql` package (apt-get install postgresql)"


def find_bindir(search: list[str] | None = None) -> Path | None:
    """The folder holding `initdb` and `pg_ctl`: on PATH, else in `pg_config --bindir`, else
    the newest `/usr/lib/postgresql/*/bin` (`search` replaces these places, for tests)."""
    if search is None:
        search = []
        on_path = shutil.which("initdb")
        if on_path:
            search.append(str(Path(on_path).resolve().parent))
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            bindir = subprocess.run(
                ["pg_config", "--bindir"], capture_output=True, text=True, check=True
            ).stdout.strip()
            search.append(bindir)
        versions = glob.glob("/usr/lib/postgresql/*/bin")
        search.extend(sorted(versions, key=lambda p: int(Path(p).parent.name), reverse=True))
    for folder in search:
        if all(os.access(Path(folder, name), os.X_OK) for name in SERVER_BINARIES):
            return Path(folder)
    return None


def unavailable(reason: str) -> NoReturn:
    """Skip the test that needs PostgreSQL, or fail it under CI (CI=true): CI installs the
    server (.ci/run), so a missing one there is a broken setup, not a reason to skip."""
    message = f"PostgreSQL tests need a server: {reason}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PostgresServer:
    """`initdb` and `pg_ctl start` into a temporary folder; `stop` removes it all."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.port = _free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="rk8s-postgres-"))
        self.data = self.folder / "data"
        self._runner: list[str] = []
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                shutil.rmtree(self.folder, ignore_errors=True)
                unavailable("running as root, and there is no `postgres` user to run initdb as")
            os.chown(self.folder, user.pw_uid, user.pw_gid)
            self._runner = ["runuser", "-u", "postgres", "--"]

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        command = [*self._runner, *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")

    def start(self) -> str:
        self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(self.data),
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-sync",  # a throwaway cluster: durability on disk does not matter
        )
        options = (
            f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c max_connections=200"
        )
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.folder / "server.log"),
            "-w",
            "-t",
            "60",
            "start",
        )
        return self.url

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "stop")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)
