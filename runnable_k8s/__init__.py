"""runnable-k8s: run any part of a LangChain chain on autoscaled Celery workers over Redis.

This module is the only public interface; everything else is private and may change.
"""

from runnable_k8s.errors import (
    BrokerError,
    BrokerUnavailable,
    ConfigurationError,
    DisallowedObject,
    ExecutionTimeout,
    ForgedMessage,
    MessageExpired,
    MessageRejected,
    NotReplicated,
    PayloadTooLarge,
    RemoteError,
    RunCancelled,
    RunError,
    RunExpired,
    RunnableK8sError,
    RunNotFound,
    RunRejected,
    SentinelUnavailable,
    SerializationRefused,
    SignatureRejected,
    SigningKeyMismatch,
    ThreadBusy,
    UnknownEventId,
    UnknownMultitaskStrategy,
    UnknownPriority,
    WaitTimeout,
    WebhookRefused,
)
from runnable_k8s.producer.handles import RemoteRun
from runnable_k8s.producer.runnable import RunnableK8s
from runnable_k8s.protocol.messages import RunStatus
from runnable_k8s.protocol.webhook import verify_webhook
from runnable_k8s.settings import Settings

__all__ = [
    "BrokerError",
    "BrokerUnavailable",
    "ConfigurationError",
    "DisallowedObject",
    "ExecutionTimeout",
    "ForgedMessage",
    "MessageExpired",
    "MessageRejected",
    "NotReplicated",
    "PayloadTooLarge",
    "RemoteError",
    "RemoteRun",
    "RunCancelled",
    "RunError",
    "RunExpired",
    "RunNotFound",
    "RunRejected",
    "RunStatus",
    "RunnableK8s",
    "RunnableK8sError",
    "SentinelUnavailable",
    "SerializationRefused",
    "Settings",
    "SignatureRejected",
    "SigningKeyMismatch",
    "ThreadBusy",
    "UnknownEventId",
    "UnknownMultitaskStrategy",
    "UnknownPriority",
    "WaitTimeout",
    "WebhookRefused",
    "verify_webhook",
]
