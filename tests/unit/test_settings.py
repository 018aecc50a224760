"""`Settings.from_env`: parsing of every variable, validation rules, and secret hygiene."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from runnable_k8s.errors import ConfigurationError
from runnable_k8s.limits import Limit, Rate
from runnable_k8s.settings import Settings, SigningKey

KEY = "k" * 40

# Every field read from the environment: variable value -> expected field value.
PARSED: dict[str, tuple[str, Any]] = {
    "signing_key": (KEY, SigningKey(KEY.encode())),
    "redis_url": ("redis://:pw@redis:6379/2", "redis://:pw@redis:6379/2"),
    "queue": ("my-queue", "my-queue"),
    "time_limit": ("30.5", 30.5),
    "visibility_timeout": ("1000", 1000.0),
    "run_expiry": ("120", 120.0),
    "result_ttl": ("7200.25", 7200.25),
    "dead_letter_ttl": ("0", 0.0),
    "wait_timeout": ("12", 12.0),
    "max_body_bytes": ("2048", 2048),
    "allowed_classes": (" a.b:C , d.e:F,, ", ("a.b:C", "d.e:F")),
    "allowed_refs": ("pkg.mod:chain,pkg.other.", ("pkg.mod:chain", "pkg.other.")),
    "concurrency": ("7", 7),
    "batch_chunk_size": ("3", 3),
    "gc_threshold": ("50000", 50000),
    "malloc_keep": ("1048576", 1048576),
    "log_level": ("DEBUG", "DEBUG"),
    "log_json": ("yes", True),
    "heartbeat_file": ("/run/hb", "/run/hb"),
    "heartbeat_interval": ("2.5", 2.5),
    "lease": ("4.5", 4.5),
    "rescue_after": ("30", 30.0),
    "metrics_port": ("9100", 9100),
    "task_events": ("on", True),
    "remote_control": ("false", False),
    "retry_on": ("openai:RateLimitError", ("openai:RateLimitError",)),
    "max_attempts": ("5", 5),
    "retry_backoff": ("0.5", 0.5),
    "retry_backoff_max": ("10", 10.0),
    "webhook_allow": (
        "https://hooks.example.com/in/, http://10.0.0.7:8080/x",
        ("https://hooks.example.com/in/", "http://10.0.0.7:8080/x"),
    ),
    "webhook_secret": ("webhook-secret-0123456789", SigningKey(b"webhook-secret-0123456789")),
    "webhook_attempts": ("5", 5),
    "webhook_backoff": ("0.25", 0.25),
    "webhook_timeout": ("3", 3.0),
    "limits": (
        "openai:gpt-4o-mini rpm=120 tpm=40000 concurrency=5; tenant:* requests=40/10s",
        (
            Limit("openai:gpt-4o-mini", Rate(120, 60.0), Rate(40000, 60.0), 5),
            Limit("tenant:*", requests=Rate(40, 10.0)),
        ),
    ),
    "limit_margin": ("0.1", 0.1),
    "replica_acks": ("1", 1),
    "replica_ack_timeout": ("0.5", 0.5),
    "failover_wait": ("45", 45.0),
}
NOT_FROM_ENV = {"openai_available", "redact_values", "extra"}

INT_FIELDS = [n for n, (_, v) in PARSED.items() if type(v) is int]
FLOAT_FIELDS = [n for n, (_, v) in PARSED.items() if type(v) is float]
POSITIVE_FLOATS = [
    "time_limit",
    "run_expiry",
    "result_ttl",
    "wait_timeout",
    "heartbeat_interval",
    "lease",
    "rescue_after",
    "replica_ack_timeout",
    "failover_wait",
]


def env_name(field_name: str) -> str:
    return "RUNNABLE_K8S_" + field_name.upper()


def test_the_table_covers_every_setting() -> None:
    fields = {f.name for f in dataclasses.fields(Settings)}
    assert set(PARSED) == fields - NOT_FROM_ENV


@pytest.mark.parametrize("name", sorted(PARSED))
def test_each_variable_parses(name: str) -> None:
    raw, expected = PARSED[name]
    settings = Settings.from_env({env_name(name): raw})
    value = getattr(settings, name)
    assert value == expected
    assert type(value) is type(expected)


def test_all_variables_together() -> None:
    env = {env_name(name): raw for name, (raw, _) in PARSED.items()}
    settings = Settings.from_env(env)
    for name, (_, expected) in PARSED.items():
        assert getattr(settings, name) == expected, name
    assert settings.extra == {}


def test_empty_environment_gives_defaults() -> None:
    assert Settings.from_env({}) == Settings()
    assert Settings.from_env({}).signing_key is None


def test_workers_start_without_task_events_and_with_remote_control() -> None:
    settings = Settings.from_env({})
    assert settings.task_events is False
    assert settings.remote_control is True


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1", True), ("true", True), ("TRUE", True), (" on ", True), ("Yes", True),
        ("0", False), ("false", False), ("off", False), ("no", False), ("", False),
    ],
)  # fmt: skip
def test_bool_spellings(raw: str, expected: bool) -> None:
    assert Settings.from_env({"RUNNABLE_K8S_LOG_JSON": raw}).log_json is expected


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        *[(n, "many") for n in INT_FIELDS],
        *[(n, "1.5") for n in INT_FIELDS],
        *[(n, "ten seconds") for n in FLOAT_FIELDS],
        ("log_json", "maybe"),
        ("log_json", "2"),
    ],
)
def test_unreadable_value_names_the_variable(name: str, raw: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env({env_name(name): raw})
    assert env_name(name) in str(caught.value)


def test_empty_string_clears_optional_values() -> None:
    settings = Settings.from_env({"RUNNABLE_K8S_SIGNING_KEY": "", "RUNNABLE_K8S_REDIS_URL": ""})
    assert settings.signing_key is None
    assert settings.redis_url is None


@pytest.mark.parametrize("length", [1, 16, 31])
def test_short_signing_key_refused(length: int) -> None:
    with pytest.raises(ConfigurationError, match="RUNNABLE_K8S_SIGNING_KEY"):
        Settings.from_env({"RUNNABLE_K8S_SIGNING_KEY": "x" * length})


def test_signing_key_of_32_bytes_accepted() -> None:
    settings = Settings.from_env({"RUNNABLE_K8S_SIGNING_KEY": "x" * 32})
    assert settings.require_signing_key().reveal() == b"x" * 32


def test_signing_key_length_counts_bytes_not_characters() -> None:
    # 16 two-byte characters are 32 bytes of key material.
    settings = Settings.from_env({"RUNNABLE_K8S_SIGNING_KEY": "é" * 16})
    assert len(settings.require_signing_key().reveal()) == 32


@pytest.mark.parametrize(
    "env",
    [
        {"RUNNABLE_K8S_TIME_LIMIT": "600", "RUNNABLE_K8S_VISIBILITY_TIMEOUT": "600"},
        {"RUNNABLE_K8S_TIME_LIMIT": "600", "RUNNABLE_K8S_VISIBILITY_TIMEOUT": "599"},
        {"RUNNABLE_K8S_VISIBILITY_TIMEOUT": "-1"},
    ],
)
def test_visibility_timeout_must_exceed_time_limit(env: dict[str, str]) -> None:
    with pytest.raises(ConfigurationError, match="RUNNABLE_K8S_VISIBILITY_TIMEOUT"):
        Settings.from_env(env)


def test_visibility_timeout_defaults_above_time_limit() -> None:
    settings = Settings.from_env({"RUNNABLE_K8S_TIME_LIMIT": "100"})
    assert settings.effective_visibility_timeout == 400.0
    explicit = Settings.from_env(
        {"RUNNABLE_K8S_TIME_LIMIT": "100", "RUNNABLE_K8S_VISIBILITY_TIMEOUT": "100.5"}
    )
    assert explicit.effective_visibility_timeout == 100.5


@pytest.mark.parametrize(
    ("rescue_after", "every", "within"),
    [("2", 1.0, 3.0), ("60", 15.0, 75.0), ("600", 30.0, 630.0)],
)
def test_rescue_sweeps_every_quarter_of_rescue_after_within_1_to_30_s(
    rescue_after: str, every: float, within: float
) -> None:
    settings = Settings.from_env({"RUNNABLE_K8S_RESCUE_AFTER": rescue_after})
    assert (settings.rescue_every, settings.rescue_within) == (every, within)


@pytest.mark.parametrize(
    "url",
    ["http://redis:6379/0", "valkey://redis:6379", "unix:///tmp/redis.sock", "redis-host:6379"],
)
def test_non_redis_scheme_refused(url: str) -> None:
    with pytest.raises(ConfigurationError, match="RUNNABLE_K8S_REDIS_URL"):
        Settings.from_env({"RUNNABLE_K8S_REDIS_URL": url})


def test_refused_redis_url_does_not_echo_its_password() -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env({"RUNNABLE_K8S_REDIS_URL": "http://:hunter2-secret@redis:6379"})
    assert "hunter2-secret" not in str(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost",
        "rediss://:pw@redis.example:6380/1",
        "sentinel://:pw@s1:26379,s2:26379,s3/0?master_name=mymaster",
        "sentinels://s1:26379/2?master_name=m&ssl_cert_reqs=required",
    ],
)
def test_redis_schemes_accepted(url: str) -> None:
    assert Settings.from_env({"RUNNABLE_K8S_REDIS_URL": url}).redis_url == url


def test_result_ttl_below_run_expiry_refused() -> None:
    with pytest.raises(ConfigurationError, match="RUNNABLE_K8S_RESULT_TTL"):
        Settings.from_env({"RUNNABLE_K8S_RUN_EXPIRY": "3600", "RUNNABLE_K8S_RESULT_TTL": "3599"})
    equal = Settings.from_env({"RUNNABLE_K8S_RUN_EXPIRY": "60", "RUNNABLE_K8S_RESULT_TTL": "60"})
    assert equal.result_ttl == equal.run_expiry


@pytest.mark.parametrize("raw", ["-1", "nan", "inf"])
def test_dead_letter_ttl_must_be_zero_or_positive(raw: str) -> None:
    with pytest.raises(ConfigurationError, match="RUNNABLE_K8S_DEAD_LETTER_TTL"):
        Settings.from_env({"RUNNABLE_K8S_DEAD_LETTER_TTL": raw})


@pytest.mark.parametrize("name", POSITIVE_FLOATS)
@pytest.mark.parametrize("raw", ["0", "-1"])
def test_durations_must_be_positive(name: str, raw: str) -> None:
    with pytest.raises(ConfigurationError, match=env_name(name)):
        Settings.from_env({env_name(name): raw})


# float('nan') passes every comparison a range check makes, and inf is no duration: both
# are refused by name (a run with expires_at=nan would never expire).
@pytest.mark.parametrize("name", [*POSITIVE_FLOATS, "visibility_timeout"])
@pytest.mark.parametrize("raw", ["nan", "-nan", "inf"])
def test_non_finite_durations_refused(name: str, raw: str) -> None:
    with pytest.raises(ConfigurationError, match=env_name(name)):
        Settings.from_env({env_name(name): raw})


@pytest.mark.parametrize(
    ("name", "raw"),
    [("concurrency", "0"), ("batch_chunk_size", "0"), ("max_attempts", "0"),
     ("gc_threshold", "-1"), ("malloc_keep", "-1"), ("max_body_bytes", "1023"),
     ("queue", "two words"), ("queue", ""), ("replica_acks", "-1")],
)  # fmt: skip
def test_other_bounds(name: str, raw: str) -> None:
    with pytest.raises(ConfigurationError, match=env_name(name)):
        Settings.from_env({env_name(name): raw})


def test_key_never_in_repr_or_str() -> None:
    secret = "s3cr3t-" + "q" * 40
    settings = Settings.from_env({"RUNNABLE_K8S_SIGNING_KEY": secret})
    assert settings.require_signing_key().reveal() == secret.encode()
    for text in (
        repr(settings),
        str(settings),
        repr(settings.signing_key),
        str(settings.signing_key),
    ):
        assert secret not in text
        assert "s3cr3t" not in text
    # The key is also collected for redaction, but the redaction list is not shown either.
    assert secret in settings.redact_values


def test_signing_key_equality_and_hash_use_the_value() -> None:
    assert SigningKey(b"a" * 32) == SigningKey(b"a" * 32)
    assert SigningKey(b"a" * 32) != SigningKey(b"b" * 32)
    assert SigningKey(b"a" * 32) != b"a" * 32
    assert len({SigningKey(b"a" * 32), SigningKey(b"a" * 32)}) == 1


@pytest.mark.parametrize(
    ("url", "db"),
    [
        ("redis://localhost:6379/3", 3),
        ("redis://:pw@localhost:6379/15", 15),
        ("rediss://localhost/0", 0),
        ("redis://localhost:6379", 0),
        ("redis://localhost:6379/", 0),
        ("redis://localhost:6379/notadb", 0),
        ("sentinel://s1:26379,s2:26379/4?master_name=m", 4),
        ("sentinel://s1:26379?master_name=m", 0),
    ],
)
def test_redis_db_from_url_path(url: str, db: int) -> None:
    assert Settings.from_env({"RUNNABLE_K8S_REDIS_URL": url}).redis_db == db


def test_redis_db_without_url() -> None:
    assert Settings().redis_db == 0


def test_unknown_prefixed_variables_kept_in_extra() -> None:
    env = {
        "RUNNABLE_K8S_FUTURE_KNOB": "on",
        "RUNNABLE_K8S_EXTRA": "x",  # a computed field's name is not settable
        "RUNNABLE_K8S_OPENAI_AVAILABLE": "true",
        "OTHER_VAR": "ignored",
        "runnable_k8s_queue": "lowercase-is-not-ours",
    }
    settings = Settings.from_env(env)
    assert dict(settings.extra) == {
        "RUNNABLE_K8S_FUTURE_KNOB": "on",
        "RUNNABLE_K8S_EXTRA": "x",
        "RUNNABLE_K8S_OPENAI_AVAILABLE": "true",
    }
    assert settings.queue == "runnable-k8s"
    assert settings.openai_available is False


def test_redact_values_collects_secret_looking_variables() -> None:
    env = {
        "OPENAI_API_KEY": "sk-abcdefghijkl",
        "GITHUB_TOKEN": "ghp_0123456789",
        "db_password": "correct-horse",  # matched case-insensitively
        "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG",
        "GCP_CREDENTIALS": "{json-credentials}",
        "RUNNABLE_K8S_SIGNING_KEY": "z" * 32,
        "SHORT_TOKEN": "1234567",  # under 8 characters: too short to be worth redacting
        "HOME": "/home/someone-long-enough",
        "KEYBOARD_LAYOUT_NAME": "",
    }
    settings = Settings.from_env(env)
    assert set(settings.redact_values) == {
        "sk-abcdefghijkl",
        "ghp_0123456789",
        "correct-horse",
        "wJalrXUtnFEMI/K7MDENG",
        "{json-credentials}",
        "z" * 32,
    }
    # Longest first, so a secret containing another is redacted whole.
    lengths = [len(v) for v in settings.redact_values]
    assert lengths == sorted(lengths, reverse=True)
    assert "sk-abcdefghijkl" not in repr(settings)


@pytest.mark.parametrize(("value", "expected"), [("sk-x", True), ("", False), (None, False)])
def test_openai_available_reads_presence_only(value: str | None, expected: bool) -> None:
    env = {} if value is None else {"OPENAI_API_KEY": value}
    settings = Settings.from_env(env)
    assert settings.openai_available is expected
    assert "sk-x" not in repr(settings)


def test_reads_process_environment_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNNABLE_K8S_QUEUE", "from-os-environ")
    assert Settings.from_env().queue == "from-os-environ"


def test_replace_validates() -> None:
    base = Settings.from_env({"RUNNABLE_K8S_SIGNING_KEY": KEY})
    changed = base.replace(queue="other", time_limit=10.0)
    assert (changed.queue, changed.time_limit, base.queue) == ("other", 10.0, "runnable-k8s")
    assert changed.signing_key == base.signing_key
    with pytest.raises(ConfigurationError, match="RUNNABLE_K8S_SIGNING_KEY"):
        base.replace(signing_key=SigningKey(b"short"))
    with pytest.raises(ConfigurationError, match="RUNNABLE_K8S_VISIBILITY_TIMEOUT"):
        base.replace(time_limit=5000.0, visibility_timeout=100.0)
    with pytest.raises(ConfigurationError, match="RUNNABLE_K8S_REDIS_URL"):
        base.replace(redis_url="memcached://x")


def test_require_helpers() -> None:
    with pytest.raises(ConfigurationError, match="RUNNABLE_K8S_SIGNING_KEY"):
        Settings().require_signing_key()
    with pytest.raises(ConfigurationError, match="RUNNABLE_K8S_REDIS_URL"):
        Settings().require_redis_url()
    assert Settings(redis_url="redis://x").require_redis_url() == "redis://x"


@pytest.mark.parametrize("prefix", ["hooks.example.com/", "ftp://hooks.example.com/", "https://"])
def test_a_webhook_allowlist_entry_must_be_an_http_url_prefix(prefix: str) -> None:
    with pytest.raises(ConfigurationError, match="RUNNABLE_K8S_WEBHOOK_ALLOW"):
        Settings.from_env({"RUNNABLE_K8S_WEBHOOK_ALLOW": prefix})


def test_the_webhook_secret_is_redacted_and_never_shown() -> None:
    secret = "webhook-secret-0123456789"
    settings = Settings.from_env({"RUNNABLE_K8S_WEBHOOK_SECRET": secret})
    assert secret in settings.redact_values
    assert secret not in repr(settings)


# -- to_env: the inverse of from_env ----------------------------------------------------------


def _round_trip(settings: Settings) -> Settings:
    return Settings.from_env(settings.to_env())


def test_to_env_round_trips_every_setting() -> None:
    env = {env_name(name): raw for name, (raw, _) in PARSED.items()}
    env["RUNNABLE_K8S_SOMETHING_NEW"] = "kept as it is"
    settings = Settings.from_env(env)
    again = _round_trip(settings)
    assert again == settings
    for name in PARSED:
        assert type(getattr(again, name)) is type(getattr(settings, name)), name
    assert again.extra == {"RUNNABLE_K8S_SOMETHING_NEW": "kept as it is"}


def test_to_env_round_trips_the_defaults() -> None:
    assert _round_trip(Settings()) == Settings()
    assert _round_trip(Settings()).signing_key is None


def test_to_env_names_every_variable_and_only_those() -> None:
    assert set(Settings().to_env()) == {env_name(name) for name in PARSED}


def test_to_env_keeps_floats_and_empty_lists_exact() -> None:
    settings = Settings(
        time_limit=0.1 + 0.2, lease=1e-3, retry_on=(), allowed_classes=("a:B",), log_json=True
    )
    again = _round_trip(settings)
    assert again.time_limit == 0.1 + 0.2
    assert again.lease == 1e-3
    assert again.retry_on == ()
    assert again.allowed_classes == ("a:B",)
    assert again.log_json is True
