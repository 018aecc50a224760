"""Every Redis client of runnable-k8s is built here, from `RUNNABLE_K8S_REDIS_URL`.

Two URL forms are accepted:

- `redis://[[user]:password@]host:port/db` (or `rediss://` for TLS): one Redis server.
- `sentinel://[[user]:password@]h1:26379,h2:26379,h3:26379/db?master_name=NAME` (or
  `sentinels://` for TLS to the sentinels and the data nodes): Redis Sentinel. Every sentinel
  is listed; the credentials are those of the master and its replicas; `sentinel_password`
  (and `sentinel_username`) in the query authenticate to the sentinels when they need it.
  Other query parameters (`ssl_cert_reqs`, `ssl_ca_certs`, ...) are passed to redis-py.

Producers (redis-py, sync and asyncio), workers (their own clients and kombu's Sentinel
transport) and the CLI all call these functions, so one URL means the same servers to each.
A Sentinel-managed client asks the sentinels for the master on every new connection: after a
failover, the next reconnection reaches the new master without anyone restarting.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import redis
import redis.asyncio as aredis
from redis._parsers.encoders import Encoder
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.asyncio.sentinel import SentinelConnectionPool as AsyncSentinelPool
from redis.connection import PythonRespSerializer
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.sentinel import Sentinel, SentinelConnectionPool

from runnable_k8s.errors import ConfigurationError

SENTINEL_SCHEMES = ("sentinel", "sentinels")
PLAIN_SCHEMES = ("redis", "rediss")
_DEFAULT_SENTINEL_PORT = 26379
# Query parameters that describe the sentinels themselves, not the data nodes.
_SENTINEL_ONLY = ("master_name", "sentinel_password", "sentinel_username")

REDIS_ERRORS: Final = (RedisConnectionError, RedisTimeoutError, ConnectionError, TimeoutError)
"""Errors that mean "Redis is not reachable right now" (redis-py's, which include a sentinel
naming no master and a server still loading its data, and the socket errors it lets through),
not "this command or message is bad": the one list behind every retry, ride-out and
`BrokerUnavailable` of the producer and the worker."""


# Below this many bytes a packed command goes out as one buffer (one send, one TCP segment).
JOIN_BELOW: Final = 64 * 1024


class CommandPacker(PythonRespSerializer):
    """redis-py's own command packer, joined into one buffer when small.

    hiredis's packer copies every argument (1.5 ms for a 1 MB body), so the producer uses
    redis-py's, which sends an argument over 6,000 bytes as a piece of its own. An enqueue
    carries one such argument as soon as the message ships a chain (a few kB): three `sendall`
    calls per command, each a system call and a segment on a no-delay socket that the server
    may read on its own. Joining a command under `JOIN_BELOW` copies a few kB (microseconds)
    and sends it whole; a large body still goes out uncopied as its own piece.
    """

    def __init__(self) -> None:
        super().__init__(6000, Encoder("utf-8", "strict", False).encode)  # type: ignore[no-untyped-call]

    def pack(self, *args: Any) -> list[bytes | memoryview]:
        pieces: list[bytes | memoryview] = super().pack(*args)  # type: ignore[no-untyped-call]
        if len(pieces) > 1 and sum(len(p) for p in pieces) < JOIN_BELOW:
            return [b"".join(pieces)]
        return pieces


@dataclass(frozen=True)
class SentinelUrl:
    """A parsed `sentinel://` URL."""

    sentinels: tuple[tuple[str, int], ...]
    master_name: str
    db: int
    tls: bool
    username: str | None = dataclasses.field(default=None, repr=False)
    password: str | None = dataclasses.field(default=None, repr=False)
    sentinel_username: str | None = dataclasses.field(default=None, repr=False)
    sentinel_password: str | None = dataclasses.field(default=None, repr=False)
    options: tuple[tuple[str, str], ...] = ()
    """Other query parameters, for redis-py's connections (e.g. `ssl_cert_reqs`)."""

    def node_kwargs(self) -> dict[str, Any]:
        """Connection arguments for the master (and replicas)."""
        kwargs: dict[str, Any] = {"db": self.db, **_typed(self.options)}
        if self.username:
            kwargs["username"] = self.username
        if self.password:
            kwargs["password"] = self.password
        if self.tls:
            kwargs["ssl"] = True
        return kwargs

    def broker_tls(self) -> dict[str, Any] | None:
        """The master's TLS options for kombu (Celery's `broker_use_ssl`), as `node_kwargs`
        gives them to redis-py: verified unless the query says otherwise. None without TLS."""
        if not self.tls:
            return None
        given = {k: v for k, v in _typed(self.options).items() if k.startswith("ssl_")}
        return {"ssl_cert_reqs": "required", **given}

    def sentinel_kwargs(self, **socket: Any) -> dict[str, Any]:
        """Connection arguments for the sentinels."""
        kwargs: dict[str, Any] = {
            k: v for k, v in socket.items() if k.startswith("socket_") or k == "retry"
        }
        if self.sentinel_username:
            kwargs["username"] = self.sentinel_username
        if self.sentinel_password:
            kwargs["password"] = self.sentinel_password
        if self.tls:
            kwargs.update({"ssl": True, **_typed(self.options)})
        return kwargs


def is_sentinel(url: str) -> bool:
    return urlsplit(url).scheme in SENTINEL_SCHEMES


def parse_sentinel(url: str) -> SentinelUrl:
    """Parse a `sentinel://` URL.

    Raises:
        ConfigurationError: no sentinel address, no `master_name`, or a malformed part.
    """
    parts = urlsplit(url)
    if parts.scheme not in SENTINEL_SCHEMES:
        raise ConfigurationError(f"not a sentinel:// URL (scheme {parts.scheme}://)")
    userinfo, _, hosts = parts.netloc.rpartition("@")
    username, _, password = userinfo.partition(":") if userinfo else ("", "", "")
    sentinels: list[tuple[str, int]] = []
    for address in hosts.split(","):
        host, _, port = address.strip().rpartition(":") if ":" in address else (address, "", "")
        host = host.strip("[]")
        if not host:
            raise ConfigurationError(
                "RUNNABLE_K8S_REDIS_URL: a sentinel:// URL lists every sentinel as host:port, "
                "separated by commas (sentinel://:pw@h1:26379,h2:26379/0?master_name=mymaster)"
            )
        try:
            sentinels.append((host, int(port) if port else _DEFAULT_SENTINEL_PORT))
        except ValueError as exc:
            raise ConfigurationError(
                f"RUNNABLE_K8S_REDIS_URL: sentinel port is not a number: {port!r}"
            ) from exc
    query = dict(parse_qsl(parts.query))
    master_name = query.get("master_name", "").strip()
    if not master_name:
        raise ConfigurationError(
            "RUNNABLE_K8S_REDIS_URL: a sentinel:// URL needs ?master_name=NAME (the name the "
            "sentinels monitor, `sentinel monitor NAME host port quorum`)"
        )
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise ConfigurationError(f"RUNNABLE_K8S_REDIS_URL: database is not a number: {path!r}")
    return SentinelUrl(
        sentinels=tuple(sentinels),
        master_name=master_name,
        db=int(path) if path else 0,
        tls=parts.scheme == "sentinels",
        username=unquote(username) or None,
        password=unquote(password) or None,
        sentinel_username=query.get("sentinel_username") or None,
        sentinel_password=query.get("sentinel_password") or None,
        options=tuple(sorted((k, v) for k, v in query.items() if k not in _SENTINEL_ONLY)),
    )


def check_url(url: str) -> None:
    """Raises: ConfigurationError for a URL no client here can use."""
    scheme = urlsplit(url).scheme
    if scheme in SENTINEL_SCHEMES:
        parse_sentinel(url)
    elif scheme not in PLAIN_SCHEMES:
        raise ConfigurationError(
            "RUNNABLE_K8S_REDIS_URL must start with redis://, rediss://, sentinel:// or "
            f"sentinels://, not {scheme}://"
        )


def database(url: str) -> int:
    """The database index a URL names (0 when it names none)."""
    if is_sentinel(url):
        return parse_sentinel(url).db
    path = urlsplit(url).path.strip("/")
    return int(path) if path.isdigit() else 0


def redacted(url: str) -> str:
    """The URL's servers, for logs: no credentials, no query."""
    return urlsplit(url).netloc.rpartition("@")[2]


def sync_client(url: str, *, blocking: bool = False, **kwargs: Any) -> redis.Redis:
    """A redis-py client. `blocking`: its pool waits for a free connection (`timeout`
    seconds) instead of raising when `max_connections` are taken.

    Raises:
        ConfigurationError: a malformed URL.
    """
    if not is_sentinel(url):
        if blocking:
            return redis.Redis.from_pool(redis.BlockingConnectionPool.from_url(url, **kwargs))
        return redis.Redis.from_url(url, **kwargs)
    target = parse_sentinel(url)
    manager = Sentinel(list(target.sentinels), sentinel_kwargs=target.sentinel_kwargs(**kwargs))
    pool_class = _BlockingSentinelPool if blocking else SentinelConnectionPool
    client: redis.Redis = manager.master_for(
        target.master_name,
        redis_class=redis.Redis,
        connection_pool_class=pool_class,
        **target.node_kwargs(),
        **kwargs,
    )
    return client


def async_client(url: str, *, blocking: bool = False, **kwargs: Any) -> aredis.Redis:
    """The asyncio twin of `sync_client`."""
    if not is_sentinel(url):
        if blocking:
            return aredis.Redis.from_pool(aredis.BlockingConnectionPool.from_url(url, **kwargs))
        return aredis.Redis.from_url(url, **kwargs)
    target = parse_sentinel(url)
    manager = AsyncSentinel(
        list(target.sentinels), sentinel_kwargs=target.sentinel_kwargs(**kwargs)
    )
    pool_class = _AsyncBlockingSentinelPool if blocking else AsyncSentinelPool
    aclient: aredis.Redis = manager.master_for(
        target.master_name,
        redis_class=aredis.Redis,
        connection_pool_class=pool_class,
        **target.node_kwargs(),
        **kwargs,
    )
    return aclient


async def aclose(client: aredis.Redis) -> None:
    """Close an asyncio client built by `async_client`, with the manager's clients of the
    sentinels when it is Sentinel-managed (redis-py's `aclose` closes only the master's pool;
    the sentinels' connections were left for the garbage collector, each with a
    `ResourceWarning`)."""
    manager = getattr(client.connection_pool, "sentinel_manager", None)
    try:
        await client.aclose()
    finally:
        for sentinel in getattr(manager, "sentinels", ()):
            with contextlib.suppress(Exception):
                await sentinel.aclose()


def abandon(client: aredis.Redis) -> None:
    """Close the sockets of an asyncio client whose event loop is closed, without it.

    Nothing can await a closed loop's `aclose()`, and left to the garbage collector each
    socket is closed with three `ResourceWarning`s (redis-py's, the stream's and the
    transport's). This closes each socket itself and marks what it belonged to closed, using
    asyncio's selector transport and redis-py's connection as they are (CPython 3.11 to 3.13,
    redis-py 5 to 8); on any other loop or version it falls back to the collector's way.
    """
    pools = [client.connection_pool]
    manager = getattr(client.connection_pool, "sentinel_manager", None)
    pools += [sentinel.connection_pool for sentinel in getattr(manager, "sentinels", ())]
    for pool in pools:
        held = getattr(pool, "_available_connections", [])
        for conn in [*held, *getattr(pool, "_in_use_connections", ())]:
            transport = getattr(getattr(conn, "_writer", None), "transport", None)
            if transport is None:
                continue
            with contextlib.suppress(Exception):
                # Marks the transport closing, then fails to schedule the rest on the loop.
                transport.abort()
            sock = getattr(transport, "_sock", None)
            if sock is not None:
                sock.close()
                transport._sock = None
            conn._reader = conn._writer = None


def kombu_broker(url: str) -> tuple[str, dict[str, Any]]:
    """kombu's broker URL and the transport options it needs beside it.

    kombu's Sentinel transport takes `sentinel://h1:p;sentinel://h2:p` (every sentinel a URL of
    its own, credentials and database on the first) and the master's name as a transport
    option; a plain URL passes through.
    """
    if not is_sentinel(url):
        return url, {}
    target = parse_sentinel(url)
    auth = ""
    if target.username or target.password:
        auth = f"{quote(target.username or '', safe='')}:{quote(target.password or '', safe='')}@"
    urls = [f"sentinel://{auth}{host}:{port}/{target.db}" for host, port in target.sentinels]
    options: dict[str, Any] = {"master_name": target.master_name}
    sentinel_kwargs = target.sentinel_kwargs()
    if sentinel_kwargs:
        options["sentinel_kwargs"] = sentinel_kwargs
    return ";".join(urls), options


def _typed(options: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    # redis-py's from_url converts query strings itself; here they arrive as keyword
    # arguments, so numbers and booleans are converted the same way.
    typed: dict[str, Any] = {}
    for key, value in options:
        lowered = value.lower()
        if lowered in {"true", "false"}:
            typed[key] = lowered == "true"
        elif value.isdigit():
            typed[key] = int(value)
        else:
            typed[key] = value
    return typed


class _BlockingSentinelPool(SentinelConnectionPool, redis.BlockingConnectionPool):
    """A Sentinel-managed pool that waits for a free connection (as the worker's pools do)."""


class _AsyncBlockingSentinelPool(AsyncSentinelPool, aredis.BlockingConnectionPool):
    """The asyncio twin of `_BlockingSentinelPool`."""
