"""Lua scripts kept as `.lua` files beside this module, read once and registered per client.

A script is sent with EVALSHA, and redis-py's `Script` falls back to loading it on NOSCRIPT
(after a Redis restart or a failover to a replica that never saw SCRIPT LOAD), so callers need
no load step of their own.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

import redis
import redis.asyncio as aredis
from redis.commands.core import AsyncScript, Script


@cache
def source(name: str) -> str:
    """The text of `lua/<name>.lua` (read from the installed package once per process)."""
    return resources.files(__package__).joinpath("lua", f"{name}.lua").read_text("utf-8")


def load(client: redis.Redis, name: str) -> Script:
    """`lua/<name>.lua` registered on a synchronous client."""
    return client.register_script(source(name))


def aload(client: aredis.Redis, name: str) -> AsyncScript:
    """`lua/<name>.lua` registered on an asyncio client."""
    return client.register_script(source(name))
