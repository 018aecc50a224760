"""kombu's Redis transport, hardened against items on the queue that are not messages.

Anyone who can write to Redis can LPUSH bytes onto the queue list. Stock kombu parses the item
inside its event loop and an undecodable one kills the whole worker ("Unrecoverable error:
JSONDecodeError"), taking every running run with it. Here such an item is logged and dropped
(BRPOP already removed it); everything else behaves exactly as kombu's transport.
"""

from __future__ import annotations

import logging
from queue import Empty
from typing import Any

from kombu.transport import redis as kombu_redis

log = logging.getLogger("runnable_k8s.worker")


class Channel(kombu_redis.Channel):
    def _brpop_read(self, **options: Any) -> bool:
        try:
            return bool(super()._brpop_read(**options))  # type: ignore[no-untyped-call]
        except Empty:
            raise
        except self.connection_errors:
            raise
        except (ValueError, TypeError, KeyError, AttributeError, UnicodeDecodeError) as exc:
            log.warning(
                "rejected message claimed_run=? reason=queue item is not a Celery message (%s: %s)",
                type(exc).__name__,
                str(exc)[:200],
            )
            return True


class Transport(kombu_redis.Transport):
    Channel = Channel


TRANSPORT = f"{__name__}:Transport"
