"""The live view of `runnable-k8s dev`: one status line (redrawn in place on a terminal) and a
line per event (worker started, stopped, died; scale decisions)."""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

from runnable_k8s.dev.controller import Sample
from runnable_k8s.dev.supervisor import PoolEvent, WorkerPool


class LiveView:
    def __init__(self, pool: WorkerPool, stream: TextIO | None = None, every: float = 10.0) -> None:
        self.pool = pool
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self.every = every
        self._lock = threading.Lock()
        self._status = ""
        self._last_print = 0.0
        self._last_desired: int | None = None

    def status_line(self, sample: Sample) -> str:
        counts = self.pool.counts
        queued = sample.lengths.get("queued", 0)
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
                self.stream.write("\r\x1b[K" + self._status)
                self.stream.flush()
            elif now - self._last_print >= self.every:
                self._last_print = now
                self.stream.write(self._status + "\n")
                self.stream.flush()

    def on_event(self, event: PoolEvent) -> None:
        with self._lock:
            self._line(f"{event.worker}: {event.what}")

    def message(self, text: str) -> None:
        with self._lock:
            self._line(text)

    def _line(self, text: str) -> None:
        if self.tty:
            self.stream.write("\r\x1b[K" + text + "\n" + self._status)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        with self._lock:
            if self.tty:
                self.stream.write("\n")
                self.stream.flush()
