"""Build the worker image and run it without a Docker daemon: Debian's buildah and podman.

Facts of these machines that shape every command here (see README, "Tests"):
- crun 1.8 refuses hybrid cgroup layouts, so both tools run containers with runc;
- podman's default rlimits exceed what root may set, so nofile/nproc are pinned to what the
  host allows;
- base images cannot be pulled: a stand-in for the Dockerfile's FROM image is built with
  debootstrap (Debian's python3.11) and cached between runs, keyed by its recipe;
- RUN steps reach the package index only with the host's CA bundle mounted over the image's.
Storage (images, layers, containers) lives in a private folder per test session.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import resource
import shutil
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "docker" / "Dockerfile"
TOOLS = ("buildah", "podman", "runc", "debootstrap")
SUITE = "bookworm"

# What the stand-in base is made of; its hash names the cached root filesystem, so a change
# here (or of the apt mirror) builds a new one.
# debootstrap does not resolve virtual packages: python3.11-venv's python3.11-distutils is
# python3-distutils, which needs python3 and python3-lib2to3.
STANDIN_PACKAGES = (
    "python3.11",
    "python3.11-venv",
    "python3-distutils",
    "python3-lib2to3",
    "python3",
    "ca-certificates",
    "passwd",
)
STANDIN_LINKS = {"python": "/usr/bin/python3.11", "python3": "/usr/bin/python3.11"}
STANDIN_CHANGES = (
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
    'CMD ["python3"]',
)
STANDIN_RECIPE_VERSION = 1


def missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def ulimits() -> list[str]:
    """Limits root may actually set here (podman's defaults exceed them)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nofile = 1_048_576 if hard == resource.RLIM_INFINITY else hard
    return ["--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", "nproc=32768:32768"]


def ca_bundle() -> str:
    """The host's system CA bundle, resolved (the image has its own file at that path)."""
    found = ssl.get_default_verify_paths().openssl_cafile
    return os.path.realpath(found)


def apt_mirror(suite: str = SUITE) -> str:
    """The Debian archive apt here is configured with for `suite` (no hardcoded host)."""
    sources = Path("/etc/apt")
    files = [sources / "sources.list", *sorted((sources / "sources.list.d").glob("*"))]
    for path in files:
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields = dict(
                    (key.strip().lower(), value.strip())
                    for key, _, value in (
                        line.partition(":")
                        for line in stanza.splitlines()
                        if line.strip() and not line.lstrip().startswith("#")
                    )
                )
                if (
                    "deb" in fields.get("types", "").split()
                    and suite in fields.get("suites", "").split()
                    and "main" in fields.get("components", "").split()
                ):
                    return fields["uris"].split()[0]
        else:
            for line in text.splitlines():
                words = re.sub(r"\[[^]]*\]", "", line).split()
                if (
                    len(words) >= 4
                    and words[0] == "deb"
                    and words[2] == suite
                    and "main" in words[3:]
                ):
                    return words[1]
    raise RuntimeError(f"apt here has no 'deb ... {suite} main' source for debootstrap")


def base_image_name() -> str:
    """The Dockerfile's FROM image (its PYTHON_IMAGE default), fully qualified."""
    match = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", DOCKERFILE.read_text(), re.M)
    if match is None:
        raise RuntimeError(f"{DOCKERFILE}: no ARG PYTHON_IMAGE=... default")
    name = match.group(1).split("@", 1)[0]
    first = name.split("/", 1)[0]
    if "/" not in name:
        return f"docker.io/library/{name}"
    if "." not in first and ":" not in first and first != "localhost":
        return f"docker.io/{name}"
    return name


def cache_dir() -> Path:
    """Where the stand-in base is kept across runs on this machine."""
    configured = os.environ.get("RUNNABLE_K8S_IMAGE_CACHE")
    for candidate in (configured, "/var/cache/runnable-k8s", Path.home() / ".cache/runnable-k8s"):
        if not candidate:
            continue
        path = Path(candidate)
        with contextlib.suppress(OSError):
            path.mkdir(parents=True, exist_ok=True)
            if os.access(path, os.W_OK):
                return path
    raise RuntimeError("no writable cache folder for the stand-in base image")


def _run(
    args: Sequence[str], *, timeout: float, check: bool = True, input: bytes | None = None
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        list(args),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        input=input.decode() if input is not None else None,
    )
    if check and done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(args[:6])} ... exited {done.returncode}:\n"
            f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
        )
    return done


def standin_rootfs(mirror: str) -> tuple[Path, float]:
    """A tarball of a debootstrapped Debian with python3.11, built once per recipe.

    Returns the tarball and the seconds spent building it (0 when it came from the cache)."""
    recipe = {
        "version": STANDIN_RECIPE_VERSION,
        "suite": SUITE,
        "mirror": mirror,
        "packages": STANDIN_PACKAGES,
        "links": STANDIN_LINKS,
    }
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
    folder = cache_dir()
    tarball = folder / f"standin-{SUITE}-{key}.tar"
    with open(folder / "standin.lock", "w") as lock:
        # Two sessions on one machine build it once.
        fcntl.flock(lock, fcntl.LOCK_EX)
        if tarball.is_file():
            return tarball, 0.0
        started = time.monotonic()
        with tempfile.TemporaryDirectory(dir=folder, prefix="standin-") as work:
            rootfs = Path(work) / "rootfs"
            _run(
                [
                    "debootstrap",
                    "--variant=minbase",
                    f"--include={','.join(STANDIN_PACKAGES)}",
                    SUITE,
                    str(rootfs),
                    mirror,
                ],
                timeout=1200,
            )
            for name, target in STANDIN_LINKS.items():
                (rootfs / "usr/local/bin" / name).symlink_to(target)
            for junk in ("var/lib/apt/lists", "var/cache/apt", "var/log"):
                for child in (rootfs / junk).glob("*"):
                    if child.is_dir() and not child.is_symlink():
                        shutil.rmtree(child)
                    else:
                        child.unlink()
            partial = tarball.with_suffix(".partial")
            _run(
                ["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(partial), "."],
                timeout=600,
            )
            partial.rename(tarball)
        return tarball, time.monotonic() - started


@dataclass
class Storage:
    """Private image and container storage for one test session."""

    root: Path
    names: list[str] = field(default_factory=list)

    def _flags(self) -> list[str]:
        return [
            "--root",
            str(self.root / "root"),
            "--runroot",
            str(self.root / "run"),
            "--storage-driver",
            "overlay",
        ]

    def podman(
        self, *args: str, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return _run(
            [
                "podman",
                *self._flags(),
                "--runtime",
                "runc",
                "--cgroup-manager",
                "cgroupfs",
                "--events-backend",
                "file",
                "--tmpdir",
                str(self.root / "tmp"),
                *args,
            ],
            timeout=timeout,
            check=check,
        )

    def buildah(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        return _run(["buildah", *self._flags(), *args], timeout=timeout)

    def close(self) -> None:
        self.podman("rm", "--all", "--force", "--time", "0", timeout=120, check=False)
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            self.buildah("rm", "--all", timeout=120)
        self.podman("system", "reset", "--force", timeout=300, check=False)
        shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class BuiltImage:
    tag: str
    base_seconds: float
    """Seconds spent on debootstrap (0 when the cached stand-in base was used)."""
    import_seconds: float
    build_seconds: float


def build_image(storage: Storage, tag: str, context: Path = REPO) -> BuiltImage:
    """Stand-in base imported under the FROM name, then `docker/Dockerfile` of `context` (a
    checkout of this repository) built with buildah."""
    tarball, base_seconds = standin_rootfs(apt_mirror())
    started = time.monotonic()
    changes = [arg for change in STANDIN_CHANGES for arg in ("--change", change)]
    storage.podman("import", *changes, str(tarball), base_image_name(), timeout=600)
    imported = time.monotonic()
    bundle = ca_bundle()
    storage.buildah(
        "bud",
        "--runtime",
        "runc",
        "--pull=never",
        "--network",
        "host",
        *ulimits(),
        "--volume",
        f"{bundle}:{bundle}:ro",
        "--file",
        str(context / "docker" / "Dockerfile"),
        "--tag",
        tag,
        str(context),
    )
    return BuiltImage(
        tag=tag,
        base_seconds=base_seconds,
        import_seconds=imported - started,
        build_seconds=time.monotonic() - imported,
    )


@dataclass
class Container:
    """One detached `podman run` of the worker image."""

    storage: Storage
    name: str
    started: float

    def exec(self, command: Sequence[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return self.storage.podman("exec", self.name, *command, timeout=timeout, check=False)

    def logs(self) -> str:
        done = self.storage.podman("logs", self.name, timeout=60, check=False)
        return done.stdout + done.stderr

    def signal(self, name: str) -> None:
        self.storage.podman("kill", "--signal", name, self.name, timeout=30)

    def running(self) -> bool:
        done = self.storage.podman(
            "inspect", "--format", "{{.State.Running}}", self.name, timeout=30, check=False
        )
        return done.stdout.strip() == "true"

    def wait(self, timeout: float) -> int:
        done = self.storage.podman("wait", self.name, timeout=timeout)
        return int(done.stdout.strip().splitlines()[-1])

    def remove(self) -> None:
        self.storage.podman("rm", "--force", "--time", "0", self.name, timeout=60, check=False)


def run_worker(
    storage: Storage, image: str, env: dict[str, str], name: str, env_dir: Path
) -> Container:
    """Run the image as the Deployment's pod spec does: read-only root, /tmp an emptyDir
    (tmpfs here), uid/gid 10001, every capability dropped, no privilege escalation."""
    env_file = env_dir / f"{name}.env"
    env_file.touch(mode=0o600)
    env_file.write_text("".join(f"{key}={value}\n" for key, value in env.items()))
    started = time.monotonic()
    storage.podman(
        "run",
        "--detach",
        "--name",
        name,
        "--network",
        "host",
        "--read-only",
        "--read-only-tmpfs=false",
        "--tmpfs",
        "/tmp:rw,size=256m,mode=1777",
        "--user",
        "10001:10001",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        *ulimits(),
        "--env-file",
        str(env_file),
        image,
        "worker",
        timeout=120,
    )
    return Container(storage=storage, name=name, started=started)


@contextlib.contextmanager
def private_storage() -> Iterator[Storage]:
    # podman refuses a runroot path longer than 50 characters: no pytest tmp_path here.
    parent = tempfile.gettempdir() if len(tempfile.gettempdir()) < 24 else "/tmp"
    storage = Storage(root=Path(tempfile.mkdtemp(dir=parent, prefix="rk8s-image-")))
    (storage.root / "tmp").mkdir()
    try:
        yield storage
    finally:
        storage.close()


def wait_for_probe(container: Container, command: list[str], *, ok: bool, timeout: float) -> float:
    """Run a probe command in the container until it passes (`ok`) or fails; returns the
    seconds since the container was started."""
    deadline = time.monotonic() + timeout
    while True:
        done = container.exec(command)
        if (done.returncode == 0) == ok:
            return time.monotonic() - container.started
        if time.monotonic() > deadline or not container.running():
            raise AssertionError(
                f"probe {command[-1]!r} did not {'pass' if ok else 'fail'} within {timeout} s "
                f"(last exit {done.returncode}: {done.stdout}{done.stderr})\n"
                f"{container.logs()[-4000:]}"
            )
        time.sleep(0.2)
