"""The broker options the worker derives from its settings reach kombu's Redis channel (an
option kombu does not know would be ignored silently)."""

from __future__ import annotations

import ssl

import pytest

from runnable_k8s.worker.app import celery_app, celery_config
from runnable_k8s.worker.transport import TRANSPORT
from tests.conftest import make_settings


def test_restore_options_reach_the_redis_channel(redis_url: str) -> None:
    settings = make_settings(redis_url, time_limit=60.0, visibility_timeout=400.0)
    app = celery_app(settings)
    assert app.conf.broker_transport == TRANSPORT
    with app.connection_for_write() as connection:
        channel = connection.default_channel
        assert channel.visibility_timeout == 400.0
        assert channel.unacked_restore_interval == 40
        assert channel.unacked_restore_throttle == 1
        # kombu's own default is 300 s: a worker killed while restoring held every redelivery
        # back for that long.
        assert channel.unacked_mutex_expire == 40


def test_mutex_outlives_a_restore_even_with_a_short_visibility(redis_url: str) -> None:
    settings = make_settings(redis_url, time_limit=5.0, visibility_timeout=20.0)
    transport = celery_config(settings)["broker_transport_options"]
    assert transport["unacked_restore_interval"] == 2
    assert transport["unacked_mutex_expire"] == 10


def test_the_channel_keeps_one_blocking_client_per_pool(redis_url: str) -> None:
    """kombu built a client per acknowledgement; ours keeps one per connection pool, and a
    new pool (after a reconnect) gets a new client that really reaches Redis."""
    app = celery_app(make_settings(redis_url))
    with app.connection_for_write() as connection:
        channel = connection.default_channel
        first = channel._create_client()
        assert channel._create_client() is first
        assert first.connection_pool is channel.pool
        with channel.conn_or_acquire() as client:
            assert client is first
            assert client.ping()
        channel._pool = None  # what kombu does when it drops its pools
        second = channel._create_client()
        assert second is not first
        assert second.connection_pool is channel.pool
        assert second.ping()


@pytest.mark.parametrize(
    ("url", "tls"),
    [
        (
            "sentinels://127.0.0.1:26379/0?master_name=m&ssl_cert_reqs=none&ssl_ca_certs=/ca.pem",
            {"ssl_cert_reqs": "none", "ssl_ca_certs": "/ca.pem"},
        ),
        ("sentinels://127.0.0.1:26379/0?master_name=m", {"ssl_cert_reqs": "required"}),
        ("sentinel://127.0.0.1:26379/0?master_name=m", False),
        ("rediss://127.0.0.1:6379/0", {"ssl_cert_reqs": ssl.CERT_REQUIRED}),
        ("rediss://127.0.0.1:6379/0?ssl_cert_reqs=optional", {"ssl_cert_reqs": ssl.CERT_OPTIONAL}),
    ],
)
def test_the_workers_broker_connection_gets_the_urls_tls_options(
    url: str, tls: dict[str, object] | bool
) -> None:
    # kombu's Sentinel URLs carry no query: a `sentinels://` URL's TLS options reached the
    # producers and the worker's own pools but not its Celery consumer, which then spoke
    # plain text to a TLS master (and with `ssl_cert_reqs` given, no TLS at all).
    app = celery_app(make_settings(url))
    connection = app.connection_for_read()
    assert connection.ssl == tls
