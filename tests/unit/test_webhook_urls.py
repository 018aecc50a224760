"""Which webhook URLs a worker calls, and how a receiver checks a delivery."""

from __future__ import annotations

import pytest

from runnable_k8s import SignatureRejected, WebhookRefused, verify_webhook
from runnable_k8s.protocol.webhook import check_url, sign
from runnable_k8s.settings import SigningKey

ALLOW = ("https://hooks.example.com/in", "http://127.0.0.1:9000/")


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/in",
        "https://hooks.example.com/in/run?x=1",
        "https://hooks.example.com/in#f",
        "http://127.0.0.1:9000/anything",
    ],
)
def test_urls_under_a_prefix_are_allowed(url: str) -> None:
    assert check_url(url, ALLOW) == url


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("https://hooks.example.com/inbox", "not allowed"),
        ("https://hooks.example.com.evil.net/in", "not allowed"),
        ("https://hooks.example.com:8443/in", "not allowed"),
        ("http://hooks.example.com/in", "not allowed"),
        ("https://hooks.example.com/in@evil.net/", "not allowed"),
        ("https://user@hooks.example.com/in", "user info"),
        ("http://127.0.0.1:9000@evil.net/", "user info"),
        ("https://hooks.example.com/in\\@evil.net", "control"),
        ("https://hooks.example.com/in x", "control"),
        ("https://hooks.example.com/in\n", "control"),
        ("https://hooks.exämple.com/in", "non-ASCII"),
        ("file:///etc/passwd", "http"),
        ("", "1 to"),
        (None, "1 to"),
    ],
)
def test_anything_else_is_refused_with_the_reason(url: object, why: str) -> None:
    with pytest.raises(WebhookRefused, match=why):
        check_url(url, ALLOW)


def test_an_empty_allowlist_allows_nothing() -> None:
    with pytest.raises(WebhookRefused, match="is empty"):
        check_url("https://hooks.example.com/in", ())


def test_a_receiver_verifies_body_time_and_secret() -> None:
    body = b'{"run_id":"r1","state":"succeeded"}'
    header = sign(SigningKey(b"s3cret"), body, 1_000_000)
    verify_webhook("s3cret", body, header, now=1_000_100)
    for secret, sent, at in (
        ("other", body, 1_000_100),
        ("s3cret", body + b" ", 1_000_100),
        ("s3cret", body, 1_000_301),  # past the 300 s tolerance: a replay
    ):
        with pytest.raises(SignatureRejected):
            verify_webhook(secret, sent, header, now=at)
    for bad in (None, "", "t=x,v1=00", "v1=" + "0" * 64):
        with pytest.raises(SignatureRejected):
            verify_webhook("s3cret", body, bad, now=1_000_000)
