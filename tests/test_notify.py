"""Notifications: HMAC-signed webhook delivery, retries with back-off, never blocking, log sink."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from mssante.config import NotifySection
from mssante.notify import SIGNATURE_HEADER, Event, Notifier, verify

SECRET = "s3cret-for-tests"


class Receiver:
    """A real HTTP server on 127.0.0.1 that records what it receives and can fail or stall."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.fail_first = 0
        self.stall = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if receiver.stall.is_set():
                    time.sleep(2)
                if receiver.fail_first > 0:
                    receiver.fail_first -= 1
                    self.send_response(503)
                else:
                    receiver.received.append((dict(self.headers), body))
                    self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def _config(url: str, **kw: object) -> NotifySection:
    return NotifySection(webhook_url=url, secret=SECRET, backoff_base_seconds=0.05, **kw)  # type: ignore[arg-type]


def test_webhook_delivery_is_signed(receiver: Receiver) -> None:
    notifier = Notifier(_config(receiver.url))
    event = Event("dmp.document.added", "279035121518989@patient.mssante.fr", {"document": "2.25.1"})
    notifier.notify(event)
    assert notifier.flush(5)
    notifier.close()
    [(headers, body)] = receiver.received
    assert verify(SECRET, body, headers[SIGNATURE_HEADER])
    assert not verify("other-secret", body, headers[SIGNATURE_HEADER])
    sent = json.loads(body)
    assert sent["kind"] == "dmp.document.added" and sent["id"] == event.id
    assert sent["recipient"] == "279035121518989@patient.mssante.fr"
    assert headers["X-MSSante-Event"] == "dmp.document.added"


def test_webhook_failures_are_retried_with_backoff(receiver: Receiver) -> None:
    receiver.fail_first = 2
    notifier = Notifier(_config(receiver.url))
    notifier.notify(Event("dmp.break_glass", "x@patient.mssante.fr"))
    assert notifier.flush(5)
    notifier.close()
    assert notifier.attempts == 3 and notifier.delivered == 1
    [(headers, _body)] = receiver.received
    assert headers["X-MSSante-Attempt"] == "3"
    assert [notifier.backoff(n) for n in (1, 2, 3)] == [0.05, 0.1, 0.2]


def test_webhook_down_never_blocks_and_gives_up(receiver: Receiver) -> None:
    url = receiver.url
    receiver.close()  # nothing listens any more: connection refused
    notifier = Notifier(_config(url, max_attempts=3))
    started = time.perf_counter()
    for n in range(200):
        notifier.notify(Event("dmp.document.added", f"{n}@patient.mssante.fr"))
    assert time.perf_counter() - started < 0.5  # queued, not sent inline
    assert notifier.flush(10)
    notifier.close()
    assert notifier.failed == 200 and notifier.delivered == 0 and notifier.attempts == 600


def test_slow_webhook_does_not_block_callers(receiver: Receiver) -> None:
    receiver.stall.set()
    notifier = Notifier(_config(receiver.url, timeout_seconds=5))
    notifier.notify(Event("a", "r"))
    time.sleep(0.1)  # the worker is now waiting on the stalled receiver
    started = time.perf_counter()
    notifier.notify(Event("b", "r"))
    assert time.perf_counter() - started < 1.0  # an inline send would wait the 5 s time-out
    receiver.stall.clear()
    assert notifier.flush(10)
    notifier.close()
    assert [json.loads(b)["kind"] for _h, b in receiver.received] == ["a", "b"]


def test_full_queue_drops_instead_of_blocking(receiver: Receiver) -> None:
    receiver.stall.set()
    notifier = Notifier(_config(receiver.url, queue_size=2))
    for kind in "abcdef":
        notifier.notify(Event(kind, "r"))
    assert notifier.dropped >= 3
    receiver.stall.clear()
    notifier.flush(15)
    notifier.close()


def test_without_webhook_events_go_to_the_log(caplog: pytest.LogCaptureFixture) -> None:
    notifier = Notifier(NotifySection())
    with caplog.at_level(logging.INFO, logger="mssante.notify"):
        notifier.notify(Event("dmp.document.added", "p@patient.mssante.fr", {"document": "d1"}))
    assert '"kind":"dmp.document.added"' in caplog.text
    notifier.close()


def test_webhook_needs_a_secret() -> None:
    with pytest.raises(ValueError, match="secret"):
        NotifySection(webhook_url="https://hooks.example/x")
