"""A worker's environment: what `spawn` hands a worker process, and what `dev` adds from the
ConfigMap (keda.worker_environment)."""

from __future__ import annotations

from runnable_k8s import keda, spawn
from runnable_k8s.settings import Settings, SigningKey

KEY = SigningKey(b"k" * 48)


def test_a_worker_reads_back_exactly_the_settings_it_was_given() -> None:
    settings = Settings(
        signing_key=KEY,
        redis_url="redis://127.0.0.1:6390/2",
        queue="jobs",
        time_limit=30.0,
        allowed_refs=("app.graphs:", "app.tools:agent"),
        replica_acks=1,
    )
    base = {"PATH": "/bin", "OPENAI_API_KEY": "sk-x", "RUNNABLE_K8S_QUEUE": "stray"}
    env = spawn.environment(settings, base=base)
    assert Settings.from_env(env) == settings
    # The parent's own variables pass through; its stray RUNNABLE_K8S_* ones do not.
    assert env["PATH"] == "/bin" and env["OPENAI_API_KEY"] == "sk-x"
    assert env["RUNNABLE_K8S_QUEUE"] == "jobs"


def test_extra_variables_are_set_last() -> None:
    settings = Settings(signing_key=KEY, redis_url="redis://127.0.0.1:6390/0")
    env = spawn.environment(settings, base={}, extra={"RUNNABLE_K8S_LEASE": "3", "X": "y"})
    assert env["RUNNABLE_K8S_LEASE"] == "3" and env["X"] == "y"
    assert Settings.from_env(env).lease == 3.0


def test_a_dev_worker_takes_the_configmap_then_the_callers_values_then_devs() -> None:
    settings = Settings(signing_key=KEY, redis_url="redis://127.0.0.1:6390/0", queue="dev-q")
    config = {
        "RUNNABLE_K8S_TIME_LIMIT": "120",
        "RUNNABLE_K8S_VISIBILITY_TIMEOUT": "400",
        "RUNNABLE_K8S_METRICS_PORT": "9100",
        "RUNNABLE_K8S_LOG_JSON": "true",
        "RUNNABLE_K8S_QUEUE": "cluster-q",
        "REDIS_HOST": "redis",  # not a worker setting: not copied
    }
    base = {"PATH": "/bin", "RUNNABLE_K8S_TIME_LIMIT": "90"}
    env = keda.worker_environment(settings, base=base, config_values=config)
    worker = Settings.from_env(env)
    assert worker.time_limit == 90.0  # the caller's environment wins over the ConfigMap
    assert worker.visibility_timeout == 400.0  # the ConfigMap's, where the caller sets none
    assert (worker.redis_url, worker.signing_key, worker.queue) == (
        settings.redis_url,
        KEY,
        "dev-q",
    )
    # Several local workers cannot share one metrics port; the live view reads plain text.
    assert (worker.metrics_port, worker.log_json) == (0, False)
    assert "REDIS_HOST" not in env and env["PATH"] == "/bin"


def test_the_trigger_keys_follow_the_queue() -> None:
    found = keda.trigger_keys("jobs:llm")
    assert found["queued"] == "jobs:llm"
    assert (found["high"], found["low"]) == ("jobs:llm:high", "jobs:llm:low")
    assert found["pending"] == "rk8s:pending:jobs:llm"
    assert found["inflight"] == "unacked"  # kombu's hash, for every queue of the database
