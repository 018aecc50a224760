"""LangSmith trace propagation across the queue.

The caller's LangChain run for the RunnableK8s step lives in the caller's process; the
bound runnable executes in a worker process. To make the worker's runs nest under the
caller's step in LangSmith we carry LangSmith's distributed-tracing headers with the task:

* caller: `trace_headers(run_manager)` reads the step's run (dotted order) from the
  `LangChainTracer` attached to the step's run manager and renders `langsmith-trace` and a
  minimal `baggage`, i.e. what `RunTree.to_headers()` sends, minus everything that names a
  destination;
* worker: `sanitize(raw)` re-validates those headers (the payload is signed, but a signer
  compromise or a buggy producer must not be able to steer the worker's tracing), and
  `remote_parent(headers)` installs them as the LangSmith parent around
  `await runnable.ainvoke/abatch/astream(...)`.

Mechanism on the worker: `langchain_core.callbacks.manager._configure` (which every
`ainvoke` goes through to build its callback manager) reads
`langsmith.run_helpers.get_tracing_context()["parent"]`; when it is set, the new
callback manager's `parent_run_id` becomes that run's id and the `LangChainTracer` gets
the parent's `(trace_id, dotted_order)` in its `order_map`, so the first run the worker
starts becomes a child of the caller's step (same trace id, dotted order extended).
`langsmith.run_helpers.tracing_context(parent=RunTree)` is the public way to set that.

Where runs go is the worker's own business: its environment (LANGSMITH_TRACING,
LANGSMITH_API_KEY, LANGSMITH_ENDPOINT, LANGSMITH_PROJECT, ...) decides whether it traces
and to which endpoint/project. The headers only ever carry the position in the tree, plus
metadata and tags (which already travel with the config). The caller's and the worker's
projects should be the same for the LangSmith UI to show one tree.
"""

from __future__ import annotations

import contextvars
import json
import logging
import math
import re
import urllib.parse
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final
from uuid import UUID

if TYPE_CHECKING:
    from langsmith.run_trees import RunTree

logger = logging.getLogger(__name__)

TRACE_HEADER: Final = "langsmith-trace"
BAGGAGE_HEADER: Final = "baggage"

MAX_HEADER_CHARS: Final = 4096
"""Bound on each header value. A dotted order grows by 58 characters per nesting level, so
this leaves room for ~60 levels of caller nesting; anything longer is dropped, not cut."""

_METADATA_KEY: Final = "langsmith-metadata"
_TAGS_KEY: Final = "langsmith-tags"
# Baggage keys we accept. Deliberately NOT accepted (and never emitted):
#   langsmith-project  -> would choose the LangSmith project the worker writes to;
#   langsmith-address  -> would choose an agent deployment/environment to write to;
#   langsmith-replicas -> would add write destinations (and `updates` merged into runs);
#   anything else (e.g. OpenTelemetry baggage) -> unknown semantics.
# Metadata and tags only annotate runs the worker writes to its own project.
_ALLOWED_BAGGAGE_KEYS: Final = frozenset({_METADATA_KEY, _TAGS_KEY})
# Metadata keys with meaning to LangSmith/LangChain (`ls_provider`, `ls_model_name`,
# `ls_run_depth`, ...) or private to a process ("__..."): a remote caller must not forge them.
_RESERVED_METADATA_PREFIXES: Final = ("ls_", "__")
_MAX_METADATA_ITEMS: Final = 64
_MAX_TAGS: Final = 64

_TIMESTAMP_CHARS: Final = 22  # "%Y%m%dT%H%M%S%fZ", as langsmith writes dotted orders
_SEGMENT: Final = r"\d{8}T\d{12}Z[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_DOTTED_ORDER_RE: Final = re.compile(rf"{_SEGMENT}(?:\.{_SEGMENT})*")


# --------------------------------------------------------------------------------------
# Caller side


def trace_headers(run_manager: object) -> dict[str, str] | None:
    """Propagation headers of the run `run_manager` belongs to, or None if not traced.

    `run_manager` is the `CallbackManagerForChainRun` / `AsyncCallbackManagerForChainRun`
    LangChain's `_call_with_config` / `_acall_with_config` hands to the RunnableK8s step.
    Best-effort: never raises (tracing must not fail a call); returns None when no
    LangSmith tracer is attached, i.e. tracing is off for this call.
    """
    try:
        return _trace_headers(run_manager)
    except Exception:
        logger.debug("could not read the LangSmith trace headers of the run", exc_info=True)
        return None


def _trace_headers(run_manager: object) -> dict[str, str] | None:
    # Imported lazily: langsmith costs ~100 ms to import and most calls are untraced.
    from langchain_core.tracers.langchain import LangChainTracer

    run_id = getattr(run_manager, "run_id", None)
    if not isinstance(run_id, UUID):
        return None
    handlers: list[object] = [
        *(getattr(run_manager, "handlers", None) or []),
        *(getattr(run_manager, "inheritable_handlers", None) or []),
    ]
    for handler in handlers:
        if not isinstance(handler, LangChainTracer):
            continue
        # The tracer keeps the open run (a langsmith RunTree) in `run_map` from
        # on_chain_start until on_chain_end; `order_map` holds (trace_id, dotted_order)
        # for runs it knows only by position (e.g. external parents).
        run = handler.run_map.get(str(run_id))
        if run is not None and run.dotted_order:
            headers = {TRACE_HEADER: run.dotted_order}
            baggage = _encode_baggage(run.metadata, run.tags)
        elif (order := handler.order_map.get(run_id)) is not None and order[1]:
            headers, baggage = {TRACE_HEADER: order[1]}, ""
        else:
            continue
        if baggage:
            headers[BAGGAGE_HEADER] = baggage
        # Same rules as the worker applies, so we never ship what it would drop.
        return sanitize(headers)
    return None


def _encode_baggage(metadata: object, tags: object) -> str:
    """`langsmith-metadata` / `langsmith-tags` only: never project, address or replicas,
    which would name (or leak) the caller's destination. Degrades to fewer items rather
    than exceeding the bound."""
    clean_metadata = _clean_metadata(metadata) or {}
    clean_tags = _clean_tags(tags) or []
    items: list[str] = []
    if clean_tags:
        items.append(f"{_TAGS_KEY}={urllib.parse.quote(','.join(clean_tags))}")
    if clean_metadata:
        encoded = json.dumps(clean_metadata, separators=(",", ":"), sort_keys=True)
        metadata_item = f"{_METADATA_KEY}={urllib.parse.quote(encoded)}"
        if len(",".join([*items, metadata_item])) <= MAX_HEADER_CHARS:
            items.append(metadata_item)
    baggage = ",".join(items)
    return baggage if len(baggage) <= MAX_HEADER_CHARS else ""


# --------------------------------------------------------------------------------------
# Worker side


def sanitize(raw: object) -> dict[str, str] | None:
    """Validated propagation headers from an untrusted payload, or None if nothing valid.

    Keeps only `langsmith-trace` (a well-formed dotted order) and `baggage` (rebuilt from
    its `langsmith-metadata` and `langsmith-tags` items only), both strings of at most
    `MAX_HEADER_CHARS`. Without a valid `langsmith-trace` the baggage is useless: None.
    """
    try:
        return _sanitize(raw)
    except Exception:
        logger.debug("dropping invalid trace headers", exc_info=True)
        return None


def _sanitize(raw: object) -> dict[str, str] | None:
    if not isinstance(raw, Mapping):
        return None
    trace = raw.get(TRACE_HEADER)
    if not isinstance(trace, str) or not _valid_dotted_order(trace):
        return None
    headers = {TRACE_HEADER: trace}
    baggage = raw.get(BAGGAGE_HEADER)
    if isinstance(baggage, str) and len(baggage) <= MAX_HEADER_CHARS:
        metadata, tags = _parse_baggage(baggage)
        clean = _encode_baggage(metadata, tags)
        if clean:
            headers[BAGGAGE_HEADER] = clean
    return headers


def _valid_dotted_order(value: str) -> bool:
    if len(value) > MAX_HEADER_CHARS or not _DOTTED_ORDER_RE.fullmatch(value):
        return False
    # The regex fixes the shape; also reject impossible dates so langsmith's own parser
    # (which would raise on them) never sees one.
    for segment in value.split("."):
        datetime.strptime(segment[:_TIMESTAMP_CHARS], "%Y%m%dT%H%M%S%fZ")
        UUID(segment[_TIMESTAMP_CHARS:])
    return True


def _parse_baggage(baggage: str) -> tuple[dict[str, Any], list[str]]:
    metadata: dict[str, Any] = {}
    tags: list[str] = []
    for item in baggage.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep or key not in _ALLOWED_BAGGAGE_KEYS:
            continue  # project/address/replicas/foreign keys: dropped (see above)
        text = urllib.parse.unquote(value)
        if key == _METADATA_KEY:
            try:
                metadata = _clean_metadata(json.loads(text)) or {}
            except ValueError:
                metadata = {}
        else:
            tags = _clean_tags(text.split(",")) or []
    return metadata, tags


def _clean_metadata(value: object) -> dict[str, Any] | None:
    # Flat JSON scalars only: nested objects would make the bound meaningless and nothing
    # we propagate needs them.
    if not isinstance(value, Mapping):
        return None
    out: dict[str, Any] = {}
    for key, item in value.items():
        if len(out) >= _MAX_METADATA_ITEMS:
            break
        if not isinstance(key, str) or not key or key.startswith(_RESERVED_METADATA_PREFIXES):
            continue
        if item is None or isinstance(item, str | bool | int | float):
            if isinstance(item, float) and not math.isfinite(item):  # NaN/inf: not JSON
                continue
            out[key] = item
    return out or None


def _clean_tags(value: object) -> list[str] | None:
    if not isinstance(value, list | tuple):
        return None
    # Commas separate tags inside the header: a tag containing one cannot round-trip.
    tags = [tag for tag in value if isinstance(tag, str) and tag and "," not in tag]
    return tags[:_MAX_TAGS] or None


@contextmanager
def remote_parent(headers: dict[str, str] | None) -> Iterator[None]:
    """Nest LangChain runs started inside this block under the caller's run.

    A synchronous context manager: it only sets context variables, so it works around
    `await runnable.ainvoke(...)` in a coroutine (the variables are per asyncio task).
    For `astream`, consume the stream inside the block.

    No-op when `headers` is None/invalid or when tracing is off in this process's own
    environment: a parent in the tracing context would otherwise switch tracing on
    (`langsmith.utils.tracing_is_enabled` treats "mid-trace" as enabled).
    Never raises for tracing reasons; exceptions of the body propagate unchanged.
    """
    with ExitStack() as stack:
        try:
            parent = _parent_run(headers)
            if parent is not None:
                from langsmith.run_helpers import tracing_context

                # Only `parent`: project, client and endpoint stay whatever this
                # process's environment/context says (RunTree defaults read the env).
                stack.enter_context(tracing_context(parent=parent))
        except Exception:
            logger.debug("not nesting under the caller's LangSmith run", exc_info=True)
        yield


def _parent_run(headers: dict[str, str] | None) -> RunTree | None:
    # Re-sanitize: cheap, idempotent, and keeps this safe even if called with raw input.
    clean = sanitize(headers)
    if clean is None or not _tracing_enabled_here():
        return None
    from langsmith.run_trees import RunTree

    # `from_headers` also sets a langsmith context variable (the distributed parent id,
    # used to re-root replicas); run it in a throwaway context so nothing leaks past the
    # block. `tracing_context` sets (and restores) that variable itself.
    carrier: dict[str | bytes, str | bytes] = {key: value for key, value in clean.items()}
    return contextvars.copy_context().run(RunTree.from_headers, carrier)


def _tracing_enabled_here() -> bool:
    from langchain_core.tracers.context import tracing_v2_callback_var
    from langsmith.utils import tracing_is_enabled

    # The same two signals LangChain's `_configure` uses to attach a LangChainTracer.
    return tracing_v2_callback_var.get() is not None or bool(tracing_is_enabled())
