"""The output of a `batch` run: one item per input, in order, each the input's output or the
error its call raised (LangChain's `abatch(..., return_exceptions=True)`), so one failing input
fails only its own item and the run as a whole succeeds.

On the wire, inside the outcome's signed output (encoded data), a JSON list of items:
`{"ok": true, "v": <output>}` or `{"ok": false, "e": {"type", "message", "traceback"}}`
(unchanged from earlier versions: an outcome recorded by one still reads).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from runnable_k8s.errors import SignatureRejected
from runnable_k8s.protocol.messages import RemoteFailure

_OK: Final = "ok"
_VALUE: Final = "v"
_ERROR: Final = "e"


@dataclass(frozen=True, slots=True)
class ItemFailed:
    """The item of an input whose call raised: the remote exception, as text."""

    failure: RemoteFailure


def encode_items(results: Sequence[Any]) -> list[dict[str, Any]]:
    """The wire items for per-input results: an `ItemFailed` for an input whose call raised,
    its output otherwise (encoded with the rest of the outcome's output)."""
    return [
        {_OK: False, _ERROR: result.failure.as_json()}
        if isinstance(result, ItemFailed)
        else {_OK: True, _VALUE: result}
        for result in results
    ]


def decode_items(items: Any, count: int) -> list[Any]:
    """Per-input outputs, in order, with an `ItemFailed` in place of each that raised.

    Raises:
        SignatureRejected: not a list of `count` items shaped as `encode_items` writes them.
    """
    if not isinstance(items, list) or len(items) != count:
        raise SignatureRejected("a batch run returned a malformed item list")
    results: list[Any] = []
    for item in items:
        if isinstance(item, dict) and item.get(_OK) is True:
            results.append(item.get(_VALUE))
        elif isinstance(item, dict) and isinstance(item.get(_ERROR), dict):
            results.append(ItemFailed(RemoteFailure.from_json(item[_ERROR])))
        else:
            raise SignatureRejected("a batch run returned a malformed item")
    return results
