"""JSON codecs for runnables and data, and the framing of a body into segments.

LangChain's JSON format is the only object format: no pickle anywhere. Decoding uses an
explicit class allowlist and our init validator; encoding refuses, on the producer and before
anything is enqueued, whatever would not load on the other side.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import lru_cache
from typing import Any, Final

from langchain_core.load import dumpd, dumps
from langchain_core.load._validation import _is_escaped_dict, _unescape_value
from langchain_core.load.load import InitValidator, Reviver, default_init_validator
from langchain_core.runnables import Runnable
from pydantic import BaseModel, ValidationError

from runnable_k8s.errors import DisallowedObject, SerializationRefused, SignatureRejected
from runnable_k8s.protocol import compact, interrupts
from runnable_k8s.protocol.allowlist import (
    Allowlist,
    data_allowlist,
    init_validator,
    runnable_allowlist,
)

_MAX_DEPTH: Final = 200
# Marks data that is one plain string, as UTF-8. JSON text never starts with this byte.
_TEXT: Final = b"\x00"
_TEXT_FALLBACK_LIMIT: Final = 1 << 20
_REGISTER_HINT: Final = (
    "Only objects that serialize to LangChain JSON can travel. Either replace it with a "
    "serializable equivalent, add its class to RUNNABLE_K8S_ALLOWED_CLASSES (on producer and "
    "workers) if it is a trusted Serializable class, or put the runnable into the worker image "
    "and run it by reference: RunnableK8s(ref='your_package.module:attribute') with the path "
    "in the workers' RUNNABLE_K8S_ALLOWED_REFS."
)
# Data has its own, fixed allowlist: RUNNABLE_K8S_ALLOWED_CLASSES and references are about what
# may run, so advice about them would send a user the wrong way for an input or an output.
_DATA_TYPES: Final = (
    "Inputs, outputs and stream chunks may hold JSON values (str, int, float, bool, None, and "
    "lists and string-keyed dicts of them), messages and message chunks, prompt values and "
    "documents (README: What can travel)."
)
# What to send instead of common Python values JSON has no type for. They are refused rather
# than given a private encoding: a reader on the other side would get a string either way, and
# a tagged form would be one more shape that hostile data could imitate.
_SEND_INSTEAD: Final = {
    "datetime.datetime": "an ISO 8601 string (value.isoformat(); datetime.fromisoformat reads "
    "it back)",
    "datetime.date": "an ISO 8601 string (value.isoformat(); date.fromisoformat reads it back)",
    "datetime.time": "an ISO 8601 string (value.isoformat(); time.fromisoformat reads it back)",
    "datetime.timedelta": "a number of seconds (value.total_seconds())",
    "uuid.UUID": "its string (str(value))",
    "decimal.Decimal": "a string (str(value)) or a float",
    "builtins.bytes": "text, or base64 text (base64.b64encode(value).decode())",
    "builtins.bytearray": "text, or base64 text (base64.b64encode(value).decode())",
    "builtins.dict": "a dict with string keys",
    "builtins.set": "a list",
    "builtins.frozenset": "a list",
    "pathlib.Path": "its string (str(value))",
    "pathlib.PosixPath": "its string (str(value))",
    "pathlib.WindowsPath": "its string (str(value))",
}
_CONVERT: Final = (
    "plain JSON (a pydantic model: model.model_dump(mode='json'); a dataclass: "
    "dataclasses.asdict(value))"
)


def _advice(what: str, class_path: str | None, *, instead: str | None = None) -> str:
    """What to do about a refused object, for the kind of thing that held it."""
    if what == "runnable":
        return _REGISTER_HINT
    instead = instead or _SEND_INSTEAD.get(class_path or "", _CONVERT)
    if what == "input":
        return f"{_DATA_TYPES} Send {instead} instead."
    if what in ("output", "stream chunk", "stream event"):
        verb = "returned" if what == "output" else "streamed"
        return (
            f"The runnable {verb} it on the worker. {_DATA_TYPES} Make the runnable return "
            f"{instead} instead (for a chain: end it with a parser or a step that converts it)."
        )
    return f"{_DATA_TYPES} Use {instead} instead."


class Codec:
    """Encodes and decodes one kind of payload against one allowlist."""

    __slots__ = ("_paths", "_reviver", "_validator")

    def __init__(self, allowlist: Allowlist, validator: InitValidator = init_validator) -> None:
        self._paths = allowlist.class_paths()
        self._validator = validator
        # Built once: constructing a Reviver computes class paths against every mapping.
        self._reviver = Reviver(
            allowed_objects=list(allowlist.classes),
            secrets_map={},
            valid_namespaces=list(allowlist.namespaces),
            secrets_from_env=False,
            init_validator=validator,
        )

    # -- data -------------------------------------------------------------------------------

    def encode_data(self, value: Any, *, what: str = "value") -> bytes:
        """Encode an input, output or chunk as LangChain JSON bytes (a plain string as its
        UTF-8 bytes behind a marker: no escaping, no parsing; strings are the common large
        payload).

        Raises:
            SerializationRefused: the value holds an object that cannot travel.
        """
        if type(value) is str:
            try:
                return _TEXT + value.encode()
            except UnicodeEncodeError as exc:  # lone surrogates: JSON can escape them
                if len(value) > _TEXT_FALLBACK_LIMIT:
                    raise SerializationRefused(f"{what} is not valid Unicode") from exc
        packed = compact.encode(value)  # the common message types, without LangChain's dump
        if packed is not None:
            return packed
        try:
            # A graph stream item whose tuples must stay tuples: lifted directly (through
            # `dumps`, its marker would `repr` the whole item first, several times the cost).
            keep = type(value) is interrupts.KeepTuples
            text = json.dumps(interrupts.lift(value)) if keep else dumps(value)
        except (TypeError, ValueError, RecursionError) as exc:
            raise SerializationRefused(
                f"{what} cannot be encoded as JSON: {exc!r}"[:500] + f". {_advice(what, None)}"
            ) from exc
        if '"lc"' in text:
            # dumps never raises on unsupported objects; it writes a marker that only fails
            # on load. Find it here, where we can still name the object, and refuse classes
            # the other side would refuse.
            tree = json.loads(text)
            if not keep and '"not_implemented"' in text and interrupts.holds_tagged(tree):
                # LangGraph's interrupts and commands travel in a shape of our own.
                tree = interrupts.lift(value)
                text = json.dumps(tree)
            self._check_tree(tree, what=what)
            self._refuse_unsupported(tree, what)
        return text.encode()

    def decode_data(self, raw: bytes) -> Any:
        """Decode data bytes, reviving only allowlisted classes.

        Raises:
            DisallowedObject: a class outside the allowlist or a malformed document.
        """
        if raw.startswith(_TEXT):
            try:
                return raw[len(_TEXT) :].decode()
            except UnicodeDecodeError as exc:
                raise DisallowedObject("malformed text data") from exc
        if raw.startswith(compact.MARK):
            return compact.decode(raw, self._paths, self._validator)
        try:
            text = raw.decode()
            obj = json.loads(text)
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise DisallowedObject(f"malformed data: {type(exc).__name__}") from exc
        if '"lc"' not in text and "__lc_escaped__" not in text:
            return obj  # plain JSON: nothing to revive
        return self._revive(obj)

    # -- runnables --------------------------------------------------------------------------

    def encode_runnable(self, runnable: Runnable[Any, Any]) -> bytes:
        """Encode a runnable as LangChain JSON bytes, refusing what the allowlist would refuse.

        Raises:
            SerializationRefused: with the offending object's class and repr, and what to do.
        """
        try:
            tree = dumpd(runnable)
        except (TypeError, ValueError, RecursionError) as exc:
            raise SerializationRefused(f"{runnable!r} cannot be serialized: {exc!r}") from exc
        # Classes first: `.with_retry()` is refused as RunnableRetry, not as the exception
        # types it holds.
        self._check_tree(tree, what="runnable")
        self._refuse_unsupported(tree, "runnable")
        _refuse_dropped_clients(runnable)
        return json.dumps(tree, separators=(",", ":")).encode()

    def decode_runnable(self, raw: bytes) -> Runnable[Any, Any]:
        """Rebuild a runnable from bytes that passed signature verification.

        Raises:
            DisallowedObject: a class outside the allowlist, forbidden constructor arguments,
                or anything else that fails to construct.
        """
        try:
            obj = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise DisallowedObject(f"malformed runnable: {type(exc).__name__}") from exc
        result = self._revive(obj)
        if not isinstance(result, Runnable):
            raise DisallowedObject(f"payload is a {type(result).__name__}, not a Runnable")
        return result

    # -- internals --------------------------------------------------------------------------

    def _revive(self, obj: Any) -> Any:
        reviver: Callable[[dict[str, Any]], Any] = self._reviver

        def walk(node: Any, depth: int) -> Any:
            if depth > _MAX_DEPTH:
                raise DisallowedObject(f"payload nested more than {_MAX_DEPTH} levels deep")
            if isinstance(node, dict):
                # User dicts that contain an "lc" key are escaped by dumps (CVE-2025-68664);
                # they stay plain data and are never revived.
                if _is_escaped_dict(node):
                    return _unescape_value(node)
                if interrupts.is_tagged(node):  # rebuilt from its fields, never by class name
                    return interrupts.rebuild(node, lambda value: walk(value, depth + 1))
                return reviver({k: walk(v, depth + 1) for k, v in node.items()})
            if isinstance(node, list):
                return [walk(v, depth + 1) for v in node]
            return node

        try:
            return walk(obj, 0)
        except DisallowedObject:
            raise
        except (ValueError, TypeError, KeyError, NotImplementedError, ValidationError) as exc:
            raise DisallowedObject(_first_line(exc)) from exc
        except ImportError as exc:
            raise DisallowedObject(f"cannot import a class named by the payload: {exc}") from exc
        except Exception as exc:
            # A constructor's own validation (e.g. a model missing its API key on this side).
            raise DisallowedObject(f"cannot construct the payload: {_first_line(exc)}") from exc

    def _refuse_unsupported(self, tree: Any, what: str) -> None:
        for node, path in _walk_lc(tree):
            if node.get("type") == "not_implemented":
                cls = ".".join(str(p) for p in node.get("id", []))
                shown = str(node.get("repr", ""))[:200]
                raise SerializationRefused(
                    f"{what} contains {cls} at {path or 'the top'}, which cannot be "
                    f"serialized: {shown}. {_advice(what, cls)}"
                )

    def _check_tree(self, tree: Any, *, what: str) -> None:
        for node, path in _walk_lc(tree):
            if node.get("type") != "constructor":
                continue
            class_path = tuple(str(p) for p in node.get("id", []))
            if class_path not in self._paths:
                name = ".".join(class_path)
                if what == "runnable":
                    refusal = "not in the allowlist of classes the other side may load"
                else:  # the data allowlist is fixed: RUNNABLE_K8S_ALLOWED_CLASSES is for runnables
                    refusal = "not a class that data may hold"
                raise SerializationRefused(
                    f"{what} contains {name} at {path or 'the top'}, which is {refusal}. "
                    f"{_advice(what, name, instead='its content as plain JSON')}"
                )
            try:
                self._validator(class_path, node.get("kwargs", {}))
            except (DisallowedObject, ValueError) as exc:
                raise SerializationRefused(
                    f"{exc}. Such settings belong in the worker's environment (for example "
                    "OPENAI_BASE_URL), never in a payload sent through Redis."
                ) from exc


@lru_cache(maxsize=16)
def runnable_codec(extra_paths: tuple[str, ...] = ()) -> Codec:
    """The runnable codec for an allowlist (built once: a Reviver is costly to construct).
    Its validator refuses payload-chosen endpoints, headers, proxies and clients."""
    return Codec(runnable_allowlist(extra_paths))


@lru_cache(maxsize=1)
def data_codec() -> Codec:
    """The codec for inputs, outputs and chunks. Data classes (messages, documents, prompt
    values) open no connections, so their arguments may name URLs (e.g. `image_url` content
    blocks); LangChain's own validator still applies."""
    return Codec(data_allowlist(), default_init_validator)


# Fields that LangChain's dumpd leaves out instead of serializing: a caller who set them would
# silently get a worker without their proxy or TLS settings, so refuse rather than drop.
_DROPPED_FIELDS: Final = ("http_client", "http_async_client")


def _refuse_dropped_clients(runnable: Any) -> None:
    seen: set[int] = set()
    stack: list[Any] = [runnable]
    while stack:
        node = stack.pop()
        if id(node) in seen or not isinstance(node, BaseModel):
            continue
        seen.add(id(node))
        for name in _DROPPED_FIELDS:
            if getattr(node, name, None) is not None:
                raise SerializationRefused(
                    f"{type(node).__name__}.{name} is set: HTTP clients cannot travel and would "
                    "be dropped. Configure proxies and TLS in the worker's environment instead."
                )
        for field_name in type(node).model_fields:
            value = getattr(node, field_name, None)
            if isinstance(value, BaseModel):
                stack.append(value)
            elif isinstance(value, list | tuple):
                stack.extend(v for v in value if isinstance(v, BaseModel))
            elif isinstance(value, dict):
                stack.extend(v for v in value.values() if isinstance(v, BaseModel))


def _walk_lc(tree: Any, path: str = "") -> Any:
    """Yield (node, path) for every LangChain-JSON node (a dict with lc == 1)."""
    stack: list[tuple[Any, str]] = [(tree, path)]
    while stack:
        node, where = stack.pop()
        if isinstance(node, dict):
            if _is_escaped_dict(node):
                continue  # user data, never an object
            if node.get("lc") == 1 and "type" in node:
                yield node, where
            for key, value in node.items():
                stack.append((value, f"{where}.{key}" if where else str(key)))
        elif isinstance(node, list):
            for index, value in enumerate(node):
                stack.append((value, f"{where}[{index}]"))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:500]


# -- framing ---------------------------------------------------------------------------------
# A body is one JSON head line followed by raw segments whose lengths the head lists. Segments
# are JSON documents themselves; framing them instead of nesting them as strings avoids escaping
# (and copying) megabytes of JSON inside JSON.


def pack(head: dict[str, Any], *segments: bytes) -> bytes:
    head = {**head, "seg": [len(s) for s in segments]}
    return b"".join((json.dumps(head, separators=(",", ":")).encode(), b"\n", *segments))


def unpack(body: bytes) -> tuple[dict[str, Any], list[bytes]]:
    """Split a verified body. Raises `SignatureRejected` if the framing is inconsistent."""
    newline = body.find(b"\n")
    try:
        head = json.loads(body[:newline]) if newline > 0 else None
    except ValueError:
        head = None
    lengths = head.get("seg") if isinstance(head, dict) else None
    if not isinstance(head, dict) or not isinstance(lengths, list):
        raise SignatureRejected("malformed body head")
    segments: list[bytes] = []
    offset = newline + 1
    for length in lengths:
        if not isinstance(length, int) or length < 0 or offset + length > len(body):
            raise SignatureRejected("malformed body segments")
        segments.append(body[offset : offset + length])
        offset += length
    if offset != len(body):
        raise SignatureRejected("trailing bytes after body segments")
    return head, segments
