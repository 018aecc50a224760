"""Processes that `runnable-k8s dev` starts die with it, however it ends.

`dev` stops its workers and its embedded server itself when it can (Ctrl-C, SIGTERM, SIGHUP, a
crash of its own). When it cannot (SIGKILL, OOM kill), the children must notice on their own, or
they are re-parented to PID 1 and retry a dead server forever. Two mechanisms, because each has
a gap:

- Linux's `PR_SET_PDEATHSIG`: the kernel signals the child the moment its parent goes. It fires
  when the parent *thread* that started the child exits, not only the process, so `dev` starts
  workers from threads that live as long as it does (its main thread and its control loop,
  which ends only when `dev` stops the workers anyway).
- A watchdog thread in the worker that compares `os.getppid()` with the pid it was given: works
  on every POSIX system, within a second.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import sys
import threading
import time
from typing import Final

_PR_SET_PDEATHSIG: Final = 1
_POLL_SECONDS: Final = 1.0


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None


# Loaded once here, not in a `preexec_fn`: between fork and exec only the call itself is safe.
_LIBC: Final = _libc()


def set_parent_death_signal(signum: int) -> bool:
    """Ask the kernel to send `signum` to this process when its parent (thread) exits.

    Returns False where this is not available (not Linux); callers then rely on a watchdog.
    """
    if _LIBC is None:
        return False
    return int(_LIBC.prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0)) == 0


def kill_with_parent() -> None:
    """A `preexec_fn` for `subprocess.Popen`: the child gets SIGKILL when its parent goes (for
    a server binary whose code we cannot change; it keeps nothing we need)."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def parent_is_gone(parent_pid: int) -> bool:
    """True when this process was re-parented (its parent `parent_pid` exited)."""
    return os.getppid() != parent_pid


def exit_with_parent(parent_pid: int, *, grace: float, poll: float = _POLL_SECONDS) -> bool:
    """Stop this process warmly (SIGTERM to itself) when `parent_pid` is gone, and hard after
    `grace` more seconds if the warm stop does not finish (a dead broker can hold it up, and no
    kubelet is left to send SIGKILL).

    Returns False, doing nothing, when the parent is already gone: the caller should not start.
    """
    if parent_is_gone(parent_pid):
        return False
    signalled = set_parent_death_signal(signal.SIGTERM)
    # The parent may have exited between the check above and the prctl call.
    if parent_is_gone(parent_pid):
        return False

    def watch() -> None:
        while not parent_is_gone(parent_pid):
            time.sleep(poll)
        if not signalled:  # the kernel has sent it otherwise; one SIGTERM is a warm stop
            os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace)
        with contextlib.suppress(Exception):
            sys.stderr.write(f"parent {parent_pid} is gone and the warm stop took {grace:g} s\n")
            sys.stderr.flush()
        os._exit(1)

    threading.Thread(target=watch, name="runnable-k8s-lifeline", daemon=True).start()
    return True
