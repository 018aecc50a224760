"""A fake LangSmith API on loopback that records the runs the langsmith client posts.

Point a process at it with `recorder.env()` (LANGSMITH_ENDPOINT etc.). It accepts the
client's ingestion endpoints: POST /runs (one run), PATCH /runs/<id>, POST /runs/batch
(JSON `{"post": [...], "patch": [...]}`) and POST /runs/multipart (multipart/form-data
with `post.<id>`, `patch.<id>`, `post.<id>.inputs`, ... parts), optionally gzip- or
zstd-encoded. Any other request gets 200 with a JSON object (`GET /info` returns `{}`,
which tells the client that zstd compression is not enabled server-side).
"""

from __future__ import annotations

import email.parser
import email.policy
import gzip
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class RecordedRun:
    """One run as merged from its post and patches."""

    id: str
    fields: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str | None:
        return self.fields.get("name")

    @property
    def parent_run_id(self) -> str | None:
        value = self.fields.get("parent_run_id")
        return None if value is None else str(value)

    @property
    def trace_id(self) -> str | None:
        value = self.fields.get("trace_id")
        return None if value is None else str(value)

    @property
    def dotted_order(self) -> str | None:
        return self.fields.get("dotted_order")

    @property
    def session_name(self) -> str | None:
        return self.fields.get("session_name")

    @property
    def ended(self) -> bool:
        return self.fields.get("end_time") is not None


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


def _decode_body(headers: dict[str, str], body: bytes) -> bytes:
    encoding = headers.get("content-encoding", "").lower()
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "zstd":
        import zstandard

        return zstandard.ZstdDecompressor().decompressobj().decompress(body)
    return body


def _multipart_parts(content_type: str, body: bytes) -> list[tuple[str, bytes]]:
    """(name, payload) for each form-data part."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body
    )
    parts: list[tuple[str, bytes]] = []
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if isinstance(name, str) and isinstance(payload, bytes):
            parts.append((name, payload))
    return parts


class LangSmithRecorder:
    def __init__(self) -> None:
        self.requests: list[Request] = []
        self._runs: dict[str, RecordedRun] = {}
        self._lock = threading.Lock()
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            self.rfile.readline()
                            break
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                    return b"".join(chunks)
                length = int(self.headers.get("Content-Length", "0"))
                return self.rfile.read(length) if length else b""

            def _handle(self) -> None:
                headers = {k.lower(): v for k, v in self.headers.items()}
                body = _decode_body(headers, self._body())
                request = Request(self.command, self.path, headers, body)
                status = 200
                try:
                    recorder._ingest(request)
                except Exception as exc:  # a parsing bug must show up in the test, not hang
                    recorder.errors.append(repr(exc))
                    status = 500
                with recorder._lock:
                    recorder.requests.append(request)
                data = b"{}"
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_PUT = _handle

            def log_message(self, *args: Any) -> None:
                return

        self.errors: list[str] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    # -- lifecycle --------------------------------------------------------------------

    def __enter__(self) -> LangSmithRecorder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)

    def env(self, **extra: str) -> dict[str, str]:
        """Environment that makes a langsmith client trace to this recorder."""
        return {
            "LANGSMITH_TRACING": "true",
            "LANGSMITH_ENDPOINT": self.url,
            "LANGSMITH_API_KEY": "fake",
            # Plain multipart bodies (the client only compresses when /info says the
            # server supports zstd, which ours does not; this also silences its warning).
            "LANGSMITH_DISABLE_RUN_COMPRESSION": "true",
            **extra,
        }

    # -- ingestion --------------------------------------------------------------------

    def _merge(self, run_id: str, fields: dict[str, Any]) -> None:
        with self._lock:
            run = self._runs.setdefault(run_id, RecordedRun(run_id))
            run.fields.update({k: v for k, v in fields.items() if v is not None})

    def _ingest(self, request: Request) -> None:
        path = request.path.split("?", 1)[0].rstrip("/")
        if request.method == "GET" or not request.body:
            return
        if path.endswith("/runs/multipart"):
            self._ingest_multipart(request)
        elif path.endswith("/runs/batch"):
            batch = json.loads(request.body)
            for op in ("post", "patch"):
                for run in batch.get(op) or []:
                    self._merge(str(run["id"]), run)
        elif path.endswith("/runs") and request.method == "POST":
            run = json.loads(request.body)
            self._merge(str(run["id"]), run)
        elif "/runs/" in path and request.method == "PATCH":
            run = json.loads(request.body)
            self._merge(path.rsplit("/", 1)[1], run)

    def _ingest_multipart(self, request: Request) -> None:
        for name, payload in _multipart_parts(request.headers["content-type"], request.body):
            pieces = name.split(".")
            if pieces[0] not in ("post", "patch") or len(pieces) not in (2, 3):
                continue  # feedback, attachments
            run_id = pieces[1]
            value = json.loads(payload)
            if len(pieces) == 2:
                self._merge(run_id, value)
            else:  # post.<id>.inputs etc.
                self._merge(run_id, {pieces[2]: value})

    # -- queries ----------------------------------------------------------------------

    @property
    def runs(self) -> list[RecordedRun]:
        with self._lock:
            return list(self._runs.values())

    def run(self, run_id: object) -> RecordedRun | None:
        with self._lock:
            return self._runs.get(str(run_id))

    def named(self, name: str) -> list[RecordedRun]:
        return [run for run in self.runs if run.name == name]

    def wait_for(
        self, predicate: Callable[[LangSmithRecorder], bool], timeout: float = 10.0
    ) -> None:
        """Wait until `predicate(self)` holds (the client posts from background threads)."""
        deadline = time.monotonic() + timeout
        while not predicate(self):
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"recorder condition not met in {timeout}s; runs: "
                    f"{[(r.name, r.id, r.parent_run_id) for r in self.runs]}; "
                    f"errors: {self.errors}"
                )
            time.sleep(0.05)
