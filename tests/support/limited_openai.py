"""An OpenAI-compatible server on loopback that enforces its own limits, as a provider does:
at most `requests` per sliding `period` (429 above it), and it records every arrival, its
tokens, and how many calls it held at once. Tokens of a call = characters of its last message.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Arrival:
    at: float
    tokens: int
    status: int


class LimitedOpenAI:
    def __init__(
        self,
        *,
        requests: int = 0,
        period: float = 1.0,
        delay: float = 0.0,
        slow: float = 0.0,
        answer: str = "ok",
    ) -> None:
        self.limit = requests
        self.period = period
        self.delay = delay
        self.slow = slow
        """Seconds a call whose last message starts with "slow" takes."""
        self.answer = answer
        self.arrivals: list[Arrival] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.in_flight_log: list[tuple[float, int]] = []
        self._window: deque[float] = deque()
        self._lock = threading.Lock()
        self._force_429: str | None = None
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                content = str(body.get("messages", [{}])[-1].get("content", ""))
                tokens = len(content)
                status, retry_after = fake._admit(tokens)
                if status == 429:
                    self._send(429, {"error": {"message": "rate limited", "type": "requests"}},
                               retry_after)  # fmt: skip
                    return
                try:
                    if fake.delay or (fake.slow and content.startswith("slow")):
                        time.sleep(fake.slow if content.startswith("slow") else fake.delay)
                    reply = {
                        "id": "chatcmpl-limited",
                        "object": "chat.completion",
                        "created": 0,
                        "model": body.get("model", "gpt-4o-mini"),
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": fake.answer},
                                "finish_reason": "stop",
                            }
                        ],
                        "usage": {
                            "prompt_tokens": tokens,
                            "completion_tokens": 0,
                            "total_tokens": tokens,
                        },
                    }
                    self._send(200, reply, None)
                finally:
                    fake._leave()

            def _send(self, status: int, reply: dict[str, Any], retry_after: str | None) -> None:
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if retry_after is not None:
                    self.send_header("Retry-After", retry_after)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def answer_next_with_429(self, retry_after: str) -> None:
        """The next request gets a 429 with this `Retry-After` (and is not served)."""
        with self._lock:
            self._force_429 = retry_after

    def _admit(self, tokens: int) -> tuple[int, str | None]:
        now = time.monotonic()
        with self._lock:
            if self._force_429 is not None:
                retry_after, self._force_429 = self._force_429, None
                self.arrivals.append(Arrival(now, tokens, 429))
                return 429, retry_after
            while self._window and self._window[0] <= now - self.period:
                self._window.popleft()
            if self.limit and len(self._window) >= self.limit:
                self.arrivals.append(Arrival(now, tokens, 429))
                return 429, "1"
            self._window.append(now)
            self.arrivals.append(Arrival(now, tokens, 200))
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.in_flight_log.append((now, self.in_flight))
            return 200, None

    def _leave(self) -> None:
        with self._lock:
            self.in_flight -= 1
            self.in_flight_log.append((time.monotonic(), self.in_flight))

    def served(self) -> list[Arrival]:
        with self._lock:
            return [a for a in self.arrivals if a.status == 200]

    def refused(self) -> list[Arrival]:
        with self._lock:
            return [a for a in self.arrivals if a.status == 429]

    def max_in_window(self, period: float, *, tokens: bool = False) -> int:
        """The most requests (or tokens) served in any sliding window of `period` seconds."""
        served = self.served()
        best = 0
        start = 0
        total = 0
        for end, arrival in enumerate(served):
            total += arrival.tokens if tokens else 1
            while served[start].at <= arrival.at - period:
                total -= served[start].tokens if tokens else 1
                start += 1
            best = max(best, total)
            del end
        return best

    def __enter__(self) -> LimitedOpenAI:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
