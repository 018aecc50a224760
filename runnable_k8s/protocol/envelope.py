"""Signed envelopes: the only way bytes cross Redis between producers and workers.

Wire format (all ASCII up to the body, so it is a valid `str` when the body is UTF-8 JSON):

    <header JSON>\\n<HMAC-SHA256 hex>\\n<body>

The header is a JSON array `[version, kind, run_id, expires_at, flags]`. The MAC covers a
domain tag, the exact header bytes and the body bytes, so no field can be changed, dropped or
swapped between messages of different kinds. Verification happens before any parsing of the
body, and the size limit before anything at all.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import math
import time
from dataclasses import dataclass
from typing import Final

from runnable_k8s.errors import ForgedMessage, MessageExpired, PayloadTooLarge, SignatureRejected
from runnable_k8s.settings import SigningKey

VERSION: Final = 1
_DOMAIN: Final = b"runnable-k8s/envelope/v1\n"
_MAC_HEX_LEN: Final = 64
# The header is tiny; a bound stops a hostile one from costing anything.
_MAX_HEADER: Final = 512

# Kinds. Each use has its own kind so a signed result can never be replayed as a run.
RUN: Final = "run"
RESULT: Final = "result"
CHUNK: Final = "chunk"
STATUS: Final = "status"
CANCEL: Final = "cancel"
RETRY_LINK: Final = "retry-of"
WEBHOOK: Final = "webhook"
WAITING: Final = "waiting"

# Results, chunks and statuses do not expire by signature; Redis TTLs bound their life, and
# the run id in the header binds them to one run.
FAR_FUTURE: Final = 4102444800.0  # 2100-01-01

# Flag: the body travels beside the message in its own Redis key (large payloads).
FLAG_BODY_BESIDE: Final = 1


@dataclass(frozen=True, slots=True)
class Envelope:
    """A verified (or to-be-signed) message."""

    kind: str
    run_id: str
    expires_at: float
    body: bytes
    flags: int = 0
    version: int = VERSION

    def header(self) -> bytes:
        return _header(self.version, self.kind, self.run_id, self.expires_at, self.flags)


# A run's stream entries all carry the same header (its run id, FAR_FUTURE): encoding it once
# per run, and parsing the same bytes once per run on the reader's side, takes two JSON calls
# off every entry. Parsing is a pure function of the bytes, and the MAC is still checked over
# them every time; the caches are bounded, so hostile headers only evict.
@functools.lru_cache(maxsize=4096, typed=True)
def _header(version: int, kind: str, run_id: str, expires_at: float, flags: int) -> bytes:
    return json.dumps([version, kind, run_id, expires_at, flags], separators=(",", ":")).encode()


@functools.lru_cache(maxsize=4096)
def _parse_header(head: bytes) -> tuple[str, str, float, int]:
    """(kind, run id, expiry, flags) of a header. Raises: SignatureRejected."""
    try:
        version, kind, run_id, expires_at, flags = json.loads(head)
    except (ValueError, TypeError, RecursionError) as exc:
        raise SignatureRejected("malformed envelope header") from exc
    if (
        version != VERSION
        or not isinstance(kind, str)
        or not isinstance(run_id, str)
        or not isinstance(expires_at, int | float)
        or not math.isfinite(expires_at)
        or not isinstance(flags, int)
    ):
        raise SignatureRejected("unsupported envelope version or header fields")
    return kind, run_id, float(expires_at), flags


@dataclass(frozen=True, slots=True)
class Header:
    """A parsed header whose MAC has not been checked yet: for logs only, never trusted."""

    kind: str
    run_id: str
    expires_at: float
    flags: int


class Signer:
    """Seals and opens envelopes with the shared key (HMAC-SHA256, constant-time compare)."""

    __slots__ = ("_key", "_max_body")

    def __init__(self, key: SigningKey, *, max_body_bytes: int) -> None:
        self._key = key.reveal()
        self._max_body = max_body_bytes

    @property
    def max_body_bytes(self) -> int:
        return self._max_body

    def _mac(self, header: bytes, body: bytes) -> bytes:
        mac = hmac.new(self._key, _DOMAIN, hashlib.sha256)
        mac.update(header)
        mac.update(b"\n")
        mac.update(body)
        return mac.hexdigest().encode()

    def seal(self, envelope: Envelope, *, detach_body: bool = False) -> bytes:
        """Return the wire bytes. With `detach_body`, the body is left out of the wire (it
        travels beside it) but is still covered by the MAC."""
        if len(envelope.body) > self._max_body:
            raise PayloadTooLarge(
                f"{envelope.kind} body of {len(envelope.body)} bytes exceeds "
                f"RUNNABLE_K8S_MAX_BODY_BYTES={self._max_body}"
            )
        header = envelope.header()
        mac = self._mac(header, envelope.body)
        return header + b"\n" + mac + b"\n" + (b"" if detach_body else envelope.body)

    def open(
        self,
        wire: bytes,
        *,
        kind: str,
        body: bytes | None = None,
        now: float | None = None,
        check_expiry: bool = True,
    ) -> Envelope:
        """Verify `wire` and return its envelope.

        Args:
            wire: bytes as read from Redis.
            kind: the kind the caller expects; any other kind is rejected.
            body: the detached body, when the header says it travels beside the message.
            now: clock override for tests.
            check_expiry: raise `MessageExpired` for an expired (but authentic) message.

        Raises:
            PayloadTooLarge: before any parsing, when the message is over the limit.
            SignatureRejected: malformed, unsigned, wrong kind or MAC mismatch.
            MessageExpired: authentic but past `expires_at`.
        """
        head, mac, inline_body = _split(wire, self._max_body)
        got_kind, run_id, expires_at, flags = _parse_header(head)
        if flags & FLAG_BODY_BESIDE:
            if body is None:
                raise SignatureRejected("envelope body travels beside the message but is missing")
            if inline_body:
                raise SignatureRejected("envelope carries both an inline and a detached body")
            if len(body) > self._max_body:
                raise PayloadTooLarge(f"detached body of {len(body)} bytes exceeds the limit")
        else:
            body = inline_body
        if not hmac.compare_digest(mac, self._mac(head, body)):
            raise ForgedMessage("signature mismatch (forged or tampered message)")
        if got_kind != kind:
            raise ForgedMessage(f"expected a {kind!r} envelope, got {got_kind!r}")
        envelope = Envelope(got_kind, run_id, expires_at, body, flags, VERSION)
        if check_expiry and (time.time() if now is None else now) > envelope.expires_at:
            raise MessageExpired(f"{kind} {run_id} expired")
        return envelope


def peek_header(wire: bytes) -> Header | None:
    """Best-effort parse of an unverified header, for logging a rejected message's id."""
    try:
        head = wire[: wire.index(b"\n", 0, _MAX_HEADER)]
        _, kind, run_id, expires_at, flags = json.loads(head)
        return Header(str(kind)[:32], str(run_id)[:64], float(expires_at), int(flags))
    except (ValueError, TypeError, OverflowError, RecursionError):
        return None


def needs_body_beside(wire: bytes) -> bool:
    """Whether an (unverified) message says its body travels beside it."""
    header = peek_header(wire)
    return header is not None and bool(header.flags & FLAG_BODY_BESIDE)


def _split(wire: bytes, max_body: int) -> tuple[bytes, bytes, bytes]:
    if len(wire) > max_body + _MAX_HEADER + _MAC_HEX_LEN + 2:
        raise PayloadTooLarge(
            f"message of {len(wire)} bytes exceeds RUNNABLE_K8S_MAX_BODY_BYTES={max_body}"
        )
    first = wire.find(b"\n", 0, _MAX_HEADER)
    if first < 0:
        raise SignatureRejected("malformed envelope (no header)")
    second = first + 1 + _MAC_HEX_LEN
    if len(wire) < second + 1 or wire[second : second + 1] != b"\n":
        raise SignatureRejected("malformed envelope (no signature)")
    return wire[:first], wire[first + 1 : second], wire[second + 1 :]
