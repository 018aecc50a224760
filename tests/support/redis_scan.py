"""Read every key and value of a Redis database, whatever the type."""

from __future__ import annotations

from collections.abc import Iterator

import redis


def everything(client: redis.Redis) -> Iterator[bytes]:
    for key in client.scan_iter(count=1000):
        yield key
        kind = client.type(key)
        if kind == b"string":
            yield client.get(key) or b""
        elif kind == b"list":
            yield from client.lrange(key, 0, -1)
        elif kind == b"hash":
            for field, value in client.hgetall(key).items():
                yield field
                yield value
        elif kind == b"set":
            yield from client.smembers(key)
        elif kind == b"zset":
            yield from client.zrange(key, 0, -1)
        elif kind == b"stream":
            for _, fields in client.xrange(key):
                for field, value in fields.items():
                    yield field
                    yield value


def contains(client: redis.Redis, needle: str) -> list[bytes]:
    """Keys or values that contain `needle` (empty when none does)."""
    raw = needle.encode()
    return [item[:200] for item in everything(client) if raw in item]
