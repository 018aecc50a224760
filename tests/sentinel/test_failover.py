"""The master SIGKILLed while 200 runs (invoke, stream, batch) flow through two workers, with
`replica_acks=1`: every accepted run returns its result exactly once, streams have no gap,
nothing is lost or duplicated, and the same worker processes carry on with the new master."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from runnable_k8s import BrokerUnavailable, RunnableK8s, connections
from runnable_k8s.settings import Settings
from runnable_k8s.store import keys
from runnable_k8s.worker.transport import SENTINEL_TRANSPORT
from tests.conftest import make_settings
from tests.support.models import SlowModel
from tests.support.sentinel import SentinelGroup
from tests.support.workers import WorkerProcess

RUNS = 200
KILL_AFTER = 60
CALLERS = 8
CHUNKS = ["part0 ", "part1 ", "part2 ", ""]  # the model's last chunk is empty


@dataclass
class Ledger:
    """What the callers saw, per run: accepted ids, results, refusals and errors."""

    accepted: list[str] = field(default_factory=list)
    refused: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    finished: list[tuple[float, float]] = field(default_factory=list)  # (submitted, done)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def note(self, **items: Any) -> None:
        with self.lock:
            for name, value in items.items():
                getattr(self, name).append(value)


def one_run(remote: RunnableK8s, index: int, ledger: Ledger) -> None:
    kind = ("invoke", "stream", "batch")[index % 3]
    submitted = time.monotonic()
    try:
        if kind == "batch":
            # A batch's runs are accepted together; it returns only when all are done.
            outputs = remote.batch([f"b{index}a", f"b{index}b"])
            got = [o.content for o in outputs]
            if got != [f"echo: b{index}a", f"echo: b{index}b"]:
                ledger.note(errors=f"batch {index}: {got}")
        else:
            run = remote.submit(f"r{index}", stream=kind == "stream")
            ledger.note(accepted=run.id)
            if kind == "invoke":
                content = run.result(timeout=90).content
                if content != f"echo: r{index}":
                    ledger.note(errors=f"invoke {index}: {content!r}")
            else:
                chunks = [c.content for c in run.stream(timeout=90)]
                if chunks != CHUNKS:  # a gap, a repeat or a reordering
                    ledger.note(errors=f"stream {index}: {chunks}")
    except BrokerUnavailable:
        ledger.note(refused=index)
        return
    except Exception as exc:  # every other failure is a finding: reported, not swallowed
        ledger.note(errors=f"{kind} {index}: {type(exc).__name__}: {exc}")
        return
    ledger.note(finished=(submitted, time.monotonic()))


def drive(remote: RunnableK8s, ledger: Ledger, at_kill: Callable[[], None]) -> float:
    """Run RUNS runs from CALLERS threads; call `at_kill` once KILL_AFTER have finished.
    Returns the monotonic time of the kill."""
    counter = itertools.count()
    killed: list[float] = []
    kill_lock = threading.Lock()

    def caller() -> None:
        while (index := next(counter)) < RUNS:
            one_run(remote, index, ledger)
            with kill_lock:
                if not killed and len(ledger.finished) >= KILL_AFTER:
                    killed.append(time.monotonic())
                    at_kill()

    threads = [threading.Thread(target=caller) for _ in range(CALLERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(240)
    assert not any(t.is_alive() for t in threads), "callers still waiting"
    assert killed, "the master was never killed"
    return killed[0]


def start_workers(settings: Settings, logs_dir: Path, workers: list[WorkerProcess]) -> None:
    env = {
        "RUNNABLE_K8S_REPLICA_ACKS": "1",
        "RUNNABLE_K8S_REPLICA_ACK_TIMEOUT": "1",
        # A run whose outcome died with the master comes back this soon.
        "RUNNABLE_K8S_VISIBILITY_TIMEOUT": "8",
    }
    for name in ("sentinel-a", "sentinel-b"):
        worker = WorkerProcess(settings, logs_dir, concurrency=8, env=env, name=name)
        workers.append(worker)
    for worker in workers:
        worker.wait_ready(60)


def outcomes(client: redis.Redis, run_id: str) -> int:
    return sum(1 for _, f in client.xrange(keys.events(run_id)) if f.get(b"k") == b"r")


@pytest.mark.timeout(420)
@pytest.mark.parametrize("restart_old_master", [False, True], ids=["killed", "rejoins"])
def test_master_killed_under_load_loses_and_duplicates_nothing(
    sentinel_group: SentinelGroup,
    logs_dir: Path,
    workers: list[WorkerProcess],
    restart_old_master: bool,
) -> None:
    settings = make_settings(
        sentinel_group.url,
        replica_acks=1,
        replica_ack_timeout=1.0,
        failover_wait=60.0,
        time_limit=5.0,
        wait_timeout=90.0,
        rescue_after=3.0,
    )
    start_workers(settings, logs_dir, workers)
    pids = [w.process.pid for w in workers]
    remote = RunnableK8s(bound=SlowModel(delay=0.05), settings=settings)
    old = sentinel_group.master()
    ledger = Ledger()

    def kill() -> None:
        old.kill()
        if restart_old_master:
            # Back on its port once the sentinels promoted the replica: they turn it into a
            # replica of the new master (its empty data set is replaced by a full sync).
            def rejoin() -> None:
                time.sleep(4)
                old.start()

            threading.Thread(target=rejoin, daemon=True).start()

    killed_at = drive(remote, ledger, kill)
    assert not ledger.errors, ledger.errors[:5]
    new = sentinel_group.master()
    assert new is not old, "the sentinels promoted the replica"
    # Each run accepted by `submit` has exactly one outcome on the new master; a refused one
    # left nothing behind (it never ran).
    client = connections.sync_client(sentinel_group.url, socket_timeout=5)
    try:
        counts = {run_id: outcomes(client, run_id) for run_id in ledger.accepted}
        assert [r for r, n in counts.items() if n != 1] == [], "lost or duplicated outcomes"
        streams = sum(1 for _ in client.scan_iter(match=keys.events("*"), count=1000))
    finally:
        client.close()
    # A batch of two inputs is one run (one task per `batch_chunk_size` inputs).
    batches = [i for i in range(RUNS) if i % 3 == 2 and i not in ledger.refused]
    assert streams == len(ledger.accepted) + len(batches), "a refused run left records"
    # `failover_wait` outlasts the failover: the producers rode it out, nothing was refused.
    assert ledger.refused == []
    assert len(ledger.finished) == RUNS
    # The same worker processes, alive, reconnected by themselves.
    assert [w.process.pid for w in workers] == pids
    assert all(w.process.poll() is None for w in workers)
    # Back on our own transport after the switch to the next sentinel's URL, not kombu's stock
    # one (which never handed back the runs the kill cut: `test_clients`).
    for worker in workers:
        connected = [line for line in worker.log().splitlines() if "Connected to " in line]
        assert len(connected) >= 2, connected  # the first connection and the reconnection
        assert all(SENTINEL_TRANSPORT in line for line in connected), connected
    assert remote.invoke("after").content == "echo: after"
    if restart_old_master:
        sentinel_group.wait_settled(new)
        role = old.client().info("replication")
        assert role["role"] == "slave" and role["master_port"] == new.port
    after_kill = [done - killed_at for sub, done in ledger.finished if sub > killed_at]
    print(  # the figure the README quotes; run with -s to see it
        f"\nfailover: {len(ledger.finished)} finished, {len(ledger.refused)} refused; first run "
        f"submitted after the kill finished {min(after_kill):.2f} s after it"
    )
