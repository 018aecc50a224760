"""The live view of `runnable-k8s dev`: one status line (redrawn in place on a terminal) and a
line per event (worker started, stopped, died; scale decisions).

Output is a courtesy: when it fails (`dev | tee log` and the reader died, a closed terminal),
the view goes quiet and `dev` carries on, and stops its workers when asked. A write error that
escaped from here would abort the shutdown halfway and leave workers running.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from typing import TextIO

from runnable_k8s.dev.controller import Sample
from runnable_k8s.dev.supervisor import PoolEvent, WorkerPool


def silence(stream: TextIO) -> None:
    """Send what is still buffered in `stream`, and everything written to it later, to
    /dev/null: the reader is gone, and the interpreter's flush at exit must not fail either."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, stream.fileno())
        finally:
            os.close(devnull)


def safe_echo(text: str, stream: TextIO | None = None) -> bool:
    """Write a line; on a broken pipe or a closed stream go quiet instead of raising."""
    stream = stream or sys.stdout
    try:
        stream.write(text + "\n")
        stream.flush()
    except (OSError, ValueError):
        silence(stream)
        return False
    return True


class LiveView:
    def __init__(self, pool: WorkerPool, stream: TextIO | None = None, every: float = 10.0) -> None:
        self.pool = pool
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self.broken = False
        """Set once a write failed; nothing is written after that."""
        self.every = every
        self._lock = threading.Lock()
        self._status = ""
        self._last_print = 0.0
        self._last_desired: int | None = None

    def status_line(self, sample: Sample) -> str:
        counts = self.pool.counts
        # Every priority's list (k8s/base/scaledobject.yaml names one trigger per list).
        queued = sum(sample.lengths.get(name, 0) for name in ("high", "queued", "low"))
        inflight = sample.lengths.get("inflight", 0)
        replicas = f"replicas {sample.replicas} ({sample.ready} ready"
        replicas += f", {sample.stopping} stopping)" if sample.stopping else ")"
        text = (
            f"{time.strftime('%H:%M:%S')}  {replicas}  queued {queued}  in flight {inflight}  "
            f"done {counts['done']}  failed {counts['failed']}"
        )
        if counts["rejected"]:
            text += f"  rejected {counts['rejected']}"
        if sample.error:
            text += f"  [Redis: {sample.error[:60]}]"
        return text

    def on_sample(self, sample: Sample) -> None:
        with self._lock:
            if self._last_desired is not None and sample.desired != self._last_desired:
                self._line(
                    f"scale {self._last_desired} -> {sample.desired}: metric {sample.metric:g} "
                    f"({sample.reason})"
                )
            self._last_desired = sample.desired
            self._status = self.status_line(sample)
            now = time.monotonic()
            if self.tty:
                self._write("\r\x1b[K" + self._status)
            elif now - self._last_print >= self.every:
                self._last_print = now
                self._write(self._status + "\n")

    def on_event(self, event: PoolEvent) -> None:
        with self._lock:
            self._line(f"{event.worker}: {event.what}")

    def message(self, text: str) -> None:
        with self._lock:
            self._line(text)

    def _line(self, text: str) -> None:
        if self.tty:
            self._write("\r\x1b[K" + text + "\n" + self._status)
        else:
            self._write(text + "\n")

    def _write(self, text: str) -> None:
        if self.broken:
            return
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # BrokenPipeError (SIGPIPE is ignored), a closed stream
            self.broken = True
            silence(self.stream)

    def close(self) -> None:
        with self._lock:
            if self.tty:
                self._write("\n")
