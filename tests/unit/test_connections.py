"""`sentinel://` URLs: parsing, errors, and the form each consumer gets (kombu, redis-py)."""

from __future__ import annotations

import pytest
import redis

from runnable_k8s import RunnableK8s, SentinelUnavailable, connections
from runnable_k8s.embedded import free_port
from runnable_k8s.errors import ConfigurationError
from runnable_k8s.settings import Settings
from tests.conftest import make_settings
from tests.support.models import SlowModel

URL = "sentinel://app:p%40ss@s1:26379,s2:26380,s3/3?master_name=mymaster&sentinel_password=sp"


def test_every_part_of_a_sentinel_url_is_read() -> None:
    target = connections.parse_sentinel(URL)
    assert target.sentinels == (("s1", 26379), ("s2", 26380), ("s3", 26379))
    assert (target.master_name, target.db, target.tls) == ("mymaster", 3, False)
    assert (target.username, target.password, target.sentinel_password) == ("app", "p@ss", "sp")
    assert target.node_kwargs() == {"db": 3, "username": "app", "password": "p@ss"}
    assert target.sentinel_kwargs(socket_timeout=5, db=9) == {"socket_timeout": 5, "password": "sp"}


def test_secrets_stay_out_of_repr() -> None:
    shown = repr(connections.parse_sentinel(URL))
    assert "p@ss" not in shown and "sp'" not in shown


def test_tls_scheme_reaches_nodes_and_sentinels() -> None:
    target = connections.parse_sentinel("sentinels://s1/0?master_name=m&ssl_cert_reqs=none")
    assert target.tls
    assert target.node_kwargs() == {"db": 0, "ssl": True, "ssl_cert_reqs": "none"}
    assert target.sentinel_kwargs() == {"ssl": True, "ssl_cert_reqs": "none"}


@pytest.mark.parametrize(
    "url", ["sentinel://s1:26379,s2:26379/0", "sentinel://s1/0?master_name=", "sentinel://s1"]
)
def test_missing_master_name_is_a_configuration_error(url: str) -> None:
    with pytest.raises(ConfigurationError, match="master_name"):
        Settings.from_env({"RUNNABLE_K8S_REDIS_URL": url})


@pytest.mark.parametrize(
    "url",
    ["sentinel://s1:notaport/0?master_name=m", "sentinel://,s2/0?master_name=m",
     "sentinel://s1/x?master_name=m"],
)  # fmt: skip
def test_malformed_sentinel_urls_refused(url: str) -> None:
    with pytest.raises(ConfigurationError, match="RUNNABLE_K8S_REDIS_URL"):
        connections.parse_sentinel(url)


def test_kombu_gets_one_url_per_sentinel_and_the_master_name_as_option() -> None:
    broker, options = connections.kombu_broker(URL)
    assert broker == (
        "sentinel://app:p%40ss@s1:26379/3;sentinel://app:p%40ss@s2:26380/3;"
        "sentinel://app:p%40ss@s3:26379/3"
    )
    assert options == {"master_name": "mymaster", "sentinel_kwargs": {"password": "sp"}}


def test_plain_urls_pass_through_to_kombu() -> None:
    assert connections.kombu_broker("redis://:pw@r:6379/1") == ("redis://:pw@r:6379/1", {})


def test_redis_py_clients_ask_the_named_master_through_every_sentinel() -> None:
    client = connections.sync_client(URL, socket_timeout=2)
    pool = client.connection_pool
    assert pool.service_name == "mymaster"  # type: ignore[attr-defined]
    manager = pool.sentinel_manager  # type: ignore[attr-defined]
    assert [(s.connection_pool.connection_kwargs["host"]) for s in manager.sentinels] == [
        "s1",
        "s2",
        "s3",
    ]
    assert pool.connection_kwargs["password"] == "p@ss"
    assert isinstance(connections.sync_client(URL, blocking=True).connection_pool,
                      redis.BlockingConnectionPool)  # fmt: skip


def test_a_producer_without_reachable_sentinels_raises_sentinel_unavailable() -> None:
    url = f"sentinel://127.0.0.1:{free_port()},127.0.0.1:{free_port()}/0?master_name=m"
    remote = RunnableK8s(bound=SlowModel(), settings=make_settings(url))
    with pytest.raises(SentinelUnavailable, match="no sentinel named a master"):
        remote.submit("x")


def test_command_packer_sends_a_small_command_whole_and_a_large_body_as_it_is() -> None:
    from redis._parsers.encoders import Encoder
    from redis.connection import PythonRespSerializer

    from runnable_k8s.connections import JOIN_BELOW, CommandPacker

    plain = PythonRespSerializer(6000, Encoder("utf-8", "strict", False).encode)  # type: ignore[no-untyped-call]
    packer = CommandPacker()
    chain = b"x" * 7000  # a shipped chain: redis-py alone would send it as three pieces
    args = ("EVALSHA", "abc", 1, "key", chain, 3)
    assert len(plain.pack(*args)) == 3  # type: ignore[no-untyped-call]
    assert packer.pack(*args) == [b"".join(plain.pack(*args))]  # type: ignore[no-untyped-call]
    body = b"y" * JOIN_BELOW
    large = packer.pack("SET", "key", body)
    assert any(piece is body for piece in large)  # not copied
    assert b"".join(large) == b"".join(plain.pack("SET", "key", body))  # type: ignore[no-untyped-call]
    assert packer.pack("GET", "k") == plain.pack("GET", "k")  # type: ignore[no-untyped-call]
