"""The messages producers and workers exchange, and the one object that seals and opens them.

`Protocol` is the small interface both sides use: it owns the signer and both codecs, so
signing, size limits and allowlists live in one place.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, cast

from runnable_k8s.errors import ForgedMessage, SignatureRejected
from runnable_k8s.protocol import envelope as env
from runnable_k8s.protocol import reasons, stream
from runnable_k8s.protocol.codec import data_codec, pack, runnable_codec, unpack
from runnable_k8s.protocol.graph_state import GraphCall
from runnable_k8s.settings import Settings

Mode = Literal["invoke", "batch", "stream"]
MODES: Final = ("invoke", "batch", "stream")

State = Literal[
    "queued", "running", "retrying", "succeeded", "interrupted", "failed", "cancelled", "expired"
]
TERMINAL_STATES: Final = frozenset({"succeeded", "interrupted", "failed", "cancelled", "expired"})
COMPLETED_STATES: Final = frozenset({"succeeded", "interrupted"})
"""States whose run returned an output. "interrupted": a LangGraph graph stopped at
`interrupt()` and returned, `__interrupt__` included, as in-process `invoke` does; it waits for
a `Command(resume=...)` on its thread. Not a failure anywhere."""
STATES: Final = TERMINAL_STATES | {"queued", "running", "retrying"}

# Bodies above this size travel in their own Redis key beside the Celery message, so kombu's
# JSON-in-JSON envelope never copies (and escapes) megabytes.
INLINE_BODY_LIMIT: Final = 32 * 1024


@dataclass(frozen=True, slots=True)
class RunRequest:
    """One task: a runnable (shipped as JSON, or named by reference) and its input(s)."""

    run_id: str
    mode: Mode
    name: str
    runnable: bytes
    """LangChain JSON of the runnable; empty when `ref` names a registered one."""
    input: bytes
    """Encoded data: one input, or a JSON list of inputs for `batch`."""
    expires_at: float
    ref: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    configs: list[dict[str, Any]] | None = None
    """Per-input configs for `batch`."""
    trace: dict[str, str] | None = None
    """LangSmith propagation headers of the caller's run, when tracing is on."""
    time_limit: float | None = None
    """Execution limit requested by the caller; the worker applies the lower of it and its own."""
    events: bool = False
    """`stream` mode: also forward the callback events of models inside the run."""
    kwargs: dict[str, Any] | None = None
    """Call keyword arguments for a runnable run by reference (e.g. LangGraph's
    `stream_mode`); a shipped runnable has them bound into it instead."""
    queued_digest: str | None = None
    """SHA-1 (hex) of the status record the producer wrote, so a worker can start the run by
    compare-and-set without reading the record first. Not a security measure: it is signed."""
    created_at: float | None = None
    """When the producer submitted the run."""
    priority: str = "normal"
    """Which list the run waits on (protocol/priority.py)."""
    webhook: str | None = None
    """URL a worker POSTs the outcome to when the run ends (worker/webhooks.py), if the
    worker's allowlist admits it."""
    graph: GraphCall | None = None
    """A call of the referenced graph's state API (`get_state`, ...) instead of a run of it."""


@dataclass(frozen=True, slots=True)
class RemoteFailure:
    """A remote exception, as text: type name, message and traceback."""

    type: str
    message: str
    traceback: str

    def as_json(self) -> dict[str, str]:
        return {"type": self.type, "message": self.message, "traceback": self.traceback}

    @classmethod
    def from_json(cls, error: dict[str, Any]) -> RemoteFailure:
        """What `as_json` wrote (read from a signed message: missing fields read as empty)."""
        return cls(
            str(error.get("type", "")),
            str(error.get("message", "")),
            str(error.get("traceback", "")),
        )


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a run ended. `output` is encoded data (a list of item outcomes for `batch`)."""

    run_id: str
    state: State
    output: bytes = b"null"
    error: RemoteFailure | None = None
    reason: str = ""
    """Why it did not succeed, when not a remote error (protocol/reasons.py)."""
    attempt: int = 1
    chunks: int = 0
    """Stream entries (chunks and events) published before this outcome: readers check they
    saw exactly these, in order."""

    @property
    def cause(self) -> reasons.Reason | None:
        """The kind of `reason` (None: none, or free text)."""
        return reasons.reason_of(self.reason)


@dataclass(frozen=True, slots=True)
class RunStatus:
    """Where a run is: state, attempt and timestamps (seconds since the epoch)."""

    run_id: str
    state: State
    name: str = ""
    attempt: int = 0
    created_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    reason: str = ""

    @property
    def done(self) -> bool:
        return self.state in TERMINAL_STATES


def _opt_float(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None


class Protocol:
    """Seals and opens every message that crosses Redis."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.signer = env.Signer(
            settings.require_signing_key(), max_body_bytes=settings.max_body_bytes
        )
        self.runnables = runnable_codec(settings.allowed_classes)
        self.data = data_codec()

    # -- run requests -----------------------------------------------------------------------

    def seal_request(self, request: RunRequest) -> tuple[bytes, bytes | None]:
        """Return (wire for the Celery message, body to store beside it or None)."""
        head: dict[str, Any] = {"mode": request.mode, "name": request.name}
        for key in (
            "ref",
            "configs",
            "trace",
            "time_limit",
            "kwargs",
            "queued_digest",
            "created_at",
            "webhook",
        ):
            value = getattr(request, key)
            if value is not None:
                head[key] = value
        if request.config:
            head["config"] = request.config
        if request.events:
            head["events"] = True
        if request.priority != "normal":
            head["priority"] = request.priority
        if request.graph is not None:
            head["graph"] = request.graph.as_json()
        body = pack(head, request.runnable, request.input)
        envelope = env.Envelope(env.RUN, request.run_id, request.expires_at, body)
        if len(body) <= INLINE_BODY_LIMIT:
            return self.signer.seal(envelope), None
        beside = env.Envelope(
            env.RUN, request.run_id, request.expires_at, body, flags=env.FLAG_BODY_BESIDE
        )
        return self.signer.seal(beside, detach_body=True), body

    def open_request(
        self, wire: bytes, *, beside: bytes | None = None, check_expiry: bool = True
    ) -> RunRequest:
        """Verify and parse a run request.

        Raises:
            MessageRejected: subclasses for size, signature, framing and expiry.
        """
        envelope = self.signer.open(wire, kind=env.RUN, body=beside, check_expiry=check_expiry)
        head, segments = unpack(envelope.body)
        mode = head.get("mode")
        name = head.get("name", "")
        ref = head.get("ref")
        configs = head.get("configs")
        trace = head.get("trace")
        time_limit = head.get("time_limit")
        kwargs = head.get("kwargs")
        queued_digest = head.get("queued_digest")
        created_at = head.get("created_at")
        priority = head.get("priority", "normal")
        webhook = head.get("webhook")
        if (
            mode not in MODES
            or len(segments) != 2
            or not isinstance(name, str)
            or not (ref is None or isinstance(ref, str))
            or not (configs is None or isinstance(configs, list))
            or not (trace is None or isinstance(trace, dict))
            or not (time_limit is None or isinstance(time_limit, int | float))
            or not (kwargs is None or isinstance(kwargs, dict))
            or not (queued_digest is None or isinstance(queued_digest, str))
            or not (created_at is None or isinstance(created_at, int | float))
            or priority not in ("high", "normal", "low")
            or not (webhook is None or isinstance(webhook, str))
        ):
            raise SignatureRejected("run request head has missing or mistyped fields")
        return RunRequest(
            run_id=envelope.run_id,
            mode=mode,
            name=name,
            runnable=segments[0],
            input=segments[1],
            expires_at=envelope.expires_at,
            ref=ref,
            config=head.get("config") or {},
            configs=configs,
            trace=trace,
            time_limit=time_limit,
            events=head.get("events") is True,
            kwargs=kwargs,
            queued_digest=queued_digest,
            created_at=created_at,
            priority=priority,
            webhook=webhook,
            graph=None if head.get("graph") is None else GraphCall.from_json(head["graph"]),
        )

    # -- outcomes ---------------------------------------------------------------------------

    def seal_outcome(self, outcome: Outcome) -> bytes:
        head: dict[str, Any] = {
            "state": outcome.state,
            "reason": outcome.reason,
            "attempt": outcome.attempt,
            "chunks": outcome.chunks,
        }
        if outcome.error is not None:
            head["error"] = outcome.error.as_json()
        body = pack(head, outcome.output)
        return self.signer.seal(env.Envelope(env.RESULT, outcome.run_id, _far_future(), body))

    def open_outcome(self, wire: bytes, run_id: str) -> Outcome:
        envelope = self.signer.open(wire, kind=env.RESULT)
        _same_run(envelope, run_id)
        head, segments = unpack(envelope.body)
        error = head.get("error")
        failure = RemoteFailure.from_json(error) if isinstance(error, dict) else None
        state = head.get("state")
        chunks = head.get("chunks", 0)
        if state not in TERMINAL_STATES or len(segments) != 1 or not isinstance(chunks, int):
            raise SignatureRejected("outcome has an unknown state")
        return Outcome(
            run_id=run_id,
            state=state,
            output=segments[0],
            error=failure,
            reason=str(head.get("reason", "")),
            attempt=int(head.get("attempt", 1)),
            chunks=chunks,
        )

    # -- stream chunks ----------------------------------------------------------------------

    def seal_chunk(self, run_id: str, data: bytes, *, seq: int, kind: str) -> bytes:
        """A stream entry of one item (see protocol/stream.py): its position and kind ("c"
        output chunk, "e" callback event) are signed with it, so entries cannot be dropped,
        repeated, reordered or relabelled."""
        return stream.seal_batch(self.signer, run_id, seq, [(stream.ItemKind(kind), data)])

    def open_chunk(self, wire: bytes, run_id: str) -> tuple[int, str, bytes]:
        """Returns (position, kind, data) of an entry of one item."""
        items = stream.open_batch(self.signer, wire, run_id)
        if len(items) != 1:
            raise SignatureRejected("malformed stream entry")
        return items[0].seq, items[0].kind.value, items[0].data

    def seal_batch(
        self, run_id: str, first: int, items: Sequence[tuple[stream.ItemKind, bytes]]
    ) -> bytes:
        """A stream entry of items published together (see protocol/stream.py)."""
        return stream.seal_batch(self.signer, run_id, first, items)

    def open_batch(self, wire: bytes, run_id: str) -> list[stream.Item]:
        """The verified items of a stream entry, each with its signed position and kind."""
        return stream.open_batch(self.signer, wire, run_id)

    # -- statuses ---------------------------------------------------------------------------

    def seal_status(self, status: RunStatus) -> bytes:
        body = json.dumps(
            {
                "state": status.state,
                "name": status.name,
                "attempt": status.attempt,
                "created_at": status.created_at,
                "started_at": status.started_at,
                "finished_at": status.finished_at,
                "reason": status.reason,
            },
            separators=(",", ":"),
        ).encode()
        return self.signer.seal(env.Envelope(env.STATUS, status.run_id, _far_future(), body))

    def open_status(self, wire: bytes, run_id: str) -> RunStatus:
        envelope = self.signer.open(wire, kind=env.STATUS)
        _same_run(envelope, run_id)
        try:
            raw = json.loads(envelope.body)
            state = raw["state"]
        except (ValueError, KeyError, TypeError) as exc:
            raise SignatureRejected("malformed status") from exc
        if not isinstance(state, str) or state not in STATES:
            raise SignatureRejected("status has an unknown state")
        return RunStatus(
            run_id=run_id,
            state=cast(State, state),
            name=str(raw.get("name", "")),
            attempt=int(raw.get("attempt", 0)),
            created_at=_opt_float(raw.get("created_at")),
            started_at=_opt_float(raw.get("started_at")),
            finished_at=_opt_float(raw.get("finished_at")),
            reason=str(raw.get("reason", "")),
        )

    # -- cancellation -----------------------------------------------------------------------

    def seal_cancel(self, run_id: str) -> bytes:
        return self.signer.seal(
            env.Envelope(env.CANCEL, run_id, time.time() + self.settings.result_ttl, b"")
        )

    def open_cancel(self, wire: bytes, run_id: str) -> None:
        _same_run(self.signer.open(wire, kind=env.CANCEL), run_id)


def _same_run(envelope: env.Envelope, run_id: str) -> None:
    # A valid message copied into another run's key must not be accepted there.
    if envelope.run_id != run_id:
        raise ForgedMessage(f"message belongs to run {envelope.run_id}, not {run_id}")


def _far_future() -> float:
    # Results, chunks and statuses do not expire by signature; Redis TTLs bound their life,
    # and `_same_run` binds them to one run.
    return env.FAR_FUTURE
