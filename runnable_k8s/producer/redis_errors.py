"""The one place the producer turns Redis errors into its own.

Every call that reaches Redis runs inside `translated("what it was doing")`, a context manager
that works around blocking and awaited commands alike (and a decorator of plain and `async`
functions). A caller then sees only the library's error tree:

- `connections.REDIS_ERRORS` (Redis unreachable, timed out, still loading, ...) become
  `BrokerUnavailable`, or `SentinelUnavailable` when no sentinel named a master;
- any other `redis.RedisError` (Redis answered with an error, e.g. WRONGTYPE: someone else's
  data at one of our key names) becomes `BrokerError`.

Anything else passes through untouched, the library's own errors included.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar, cast

from redis.asyncio.sentinel import MasterNotFoundError as AsyncMasterNotFoundError
from redis.exceptions import RedisError
from redis.sentinel import MasterNotFoundError

from runnable_k8s.connections import REDIS_ERRORS
from runnable_k8s.errors import BrokerError, BrokerUnavailable, SentinelUnavailable

F = TypeVar("F", bound=Callable[..., Any])


def unavailable(doing: str, exc: BaseException) -> BrokerUnavailable:
    """The error for Redis being out of reach while `doing` (e.g. "cannot enqueue on Redis")."""
    # redis-py's asyncio Sentinel has a class of its own, no subclass of the blocking one's.
    if isinstance(exc, (MasterNotFoundError, AsyncMasterNotFoundError)):
        return SentinelUnavailable(f"{doing}: no sentinel named a master: {exc}")
    return BrokerUnavailable(f"{doing}: {exc}")


def translate(doing: str, exc: BaseException) -> BrokerError | None:
    """The library's error for `exc` raised by redis-py while `doing`; None for any other."""
    if isinstance(exc, REDIS_ERRORS):
        return unavailable(doing, exc)
    if isinstance(exc, RedisError):
        return BrokerError(f"{doing}: Redis refused: {exc}")
    return None


def translated(doing: str) -> Translated:
    """Raise Redis errors from the block (or the decorated function) as the library's, their
    message starting with `doing`.

    Example:
        with translated("cannot cancel on Redis"):
            ...
    """
    return Translated(doing)


class Translated:
    """What `translated` returns: a context manager, and a decorator of plain and `async`
    functions (not of generators)."""

    __slots__ = ("doing",)

    def __init__(self, doing: str) -> None:
        self.doing = doing

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        # Typed None, not bool: it never swallows an error, so type checkers see that code
        # after a `with translated(...)` block runs only when the block finished.
        ours = None if exc is None else translate(self.doing, exc)
        if ours is not None:
            raise ours from exc

    def __call__(self, func: F) -> F:
        # A generator's body runs after the call returns, outside any wrapper: a decorated
        # generator would leak raw Redis errors, so it is refused rather than half-served.
        if inspect.isgeneratorfunction(func) or inspect.isasyncgenfunction(func):
            raise TypeError(f"translated() cannot decorate the generator {func.__qualname__}")
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def awaited(*args: Any, **kwargs: Any) -> Any:
                with self:
                    return await func(*args, **kwargs)

            return cast(F, awaited)

        @functools.wraps(func)
        def called(*args: Any, **kwargs: Any) -> Any:
            with self:
                return func(*args, **kwargs)

        return cast(F, called)
