"""Where one SMTP message's time goes, seen from the client: MAIL, RCPT and DATA of reused
sessions, and the server's CPU per message.

Usage: ``.venv/bin/python bench/smtp_phases.py [--sessions 1] [--messages 3000] [--rounds 2]
[--with-postfix] [--with-floor] [--out FILE]``

The demo server of ``bench/smtp_ingest.py`` (one process, SQLite), ``--sessions`` sessions
opened (STARTTLS, AUTH) and warmed by 50 messages each before the clock starts, then
``--messages`` 10 KiB messages sent by one ``aiosmtplib`` client process, each session sending
its share one after another; each round reports the acknowledged rate, the server's CPU per
message (user and system, from ``/proc``) and the median of each command's round trip. Made for
A/B comparisons of a change (run it on both, alternated): the client is a single process, so
from 10 sessions on the figures describe the server's cost, not what Postfix would be measured
against (``bench/smtp_ingest.py`` does that, with several client processes).

``--with-postfix`` (root) measures the same rounds against the Postfix of
``bench/smtp_ingest.py`` (Dovecot SASL on the same argon2id hash, delivery to a Maildir),
alternated with ours (ours, Postfix, ours, Postfix…): where one message's time goes on each.

``--with-floor`` measures the same rounds against ``bench/_aiosmtpd_floor.py``: aiosmtpd with
STARTTLS and AUTH that writes each message to a file and ``fsync``s it before its ``250``, and
does nothing else. It is the floor of the protocol layer (aiosmtpd, asyncio's TLS, Python) on
this machine: what is left between it and mssante is mssante's own work before the ``250``.

It measures; it does not judge.
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiosmtplib

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import emit, loadavg
from bench.smtp_ingest import (
    RECIPIENT,
    SENDER,
    Target,
    _cpu_seconds,
    ensure_packages,
    make_message,
    start_dovecot,
    start_floor,
    start_mssante,
    start_postfix,
)

WARM_UP = 50


async def _round(target: Target, sessions: int, messages: int) -> dict[str, Any]:
    tls = ssl.create_default_context(cafile=target.client.cafile)

    async def opened() -> aiosmtplib.SMTP:
        smtp = aiosmtplib.SMTP(
            hostname="127.0.0.1", port=target.client.port, start_tls=True, tls_context=tls, timeout=300
        )
        await smtp.connect()
        await smtp.login(*target.client.login)
        return smtp

    clients = [await opened() for _ in range(sessions)]
    template = make_message(10 * 1024, "0" * 40)
    label = uuid.uuid4().hex[:8]  # this round's own: no message of another round is repeated
    sent_so_far = 0

    def message() -> bytes:
        # Each message its own (as bench/smtp_ingest.py sends them): the same bytes again
        # would be stored once, by reference, and cost less than real mail.
        nonlocal sent_so_far
        sent_so_far += 1
        return template.replace(b"0" * 40, f"{label}-{sent_so_far:012d}".ljust(40, "x").encode(), 1)

    for smtp in clients:
        for _ in range(WARM_UP):
            await smtp.sendmail(SENDER, [RECIPIENT], message())
    phases: dict[str, list[float]] = {"mail": [], "rcpt": [], "data": []}

    async def send(smtp: aiosmtplib.SMTP, count: int) -> None:
        for _ in range(count):
            body = message()
            start = time.perf_counter()
            await smtp.mail(SENDER)
            mailed = time.perf_counter()
            await smtp.rcpt(RECIPIENT)
            addressed = time.perf_counter()
            await smtp.data(body)
            done = time.perf_counter()
            phases["mail"].append(mailed - start)
            phases["rcpt"].append(addressed - mailed)
            phases["data"].append(done - addressed)

    pids = target.pids()
    per_session = messages // sessions
    cpu_before, started = _cpu_seconds(pids), time.perf_counter()
    await asyncio.gather(*(send(smtp, per_session) for smtp in clients))
    elapsed, cpu = time.perf_counter() - started, _cpu_seconds(target.pids()) - cpu_before
    for smtp in clients:
        await smtp.quit()
    sent = per_session * sessions
    return {
        "acknowledged_per_s": round(sent / elapsed, 1),
        "server_cpu_ms_per_message": round(cpu / sent * 1000, 3),
        **{f"{name}_ms_median": round(statistics.median(times) * 1000, 3) for name, times in phases.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sessions", type=int, default=1)
    parser.add_argument("--messages", type=int, default=3000, help="messages per round (all sessions)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--with-postfix", action="store_true", help="alternate with Postfix")
    parser.add_argument("--with-floor", action="store_true", help="alternate with bench/_aiosmtpd_floor.py")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    result: dict[str, Any] = {
        "benchmark": "smtp_phases",
        "sessions": args.sessions,
        "loadavg_before": loadavg(),
    }
    with tempfile.TemporaryDirectory(prefix="mssante-smtp-phases-") as base:
        stops: list[Callable[[], Any]] = []
        try:
            stop, ours, password_hash = start_mssante(Path(base))
            stops.append(stop)
            targets = [ours]
            if args.with_postfix:
                ensure_packages()
                dovecot = start_dovecot(Path(base), ours.client.login[0], password_hash)
                stops.append(dovecot.stop)
                stop, postfix = start_postfix(Path(base), "postfix", dovecot, ours.client.login, lmtp=False)
                stops.append(stop)
                targets.append(postfix)
            if args.with_floor:
                stop, floor = start_floor(Path(base), ours.client.login)
                stops.append(stop)
                targets.append(floor)
            rounds: dict[str, list[dict[str, Any]]] = {target.name: [] for target in targets}
            for _ in range(args.rounds):
                for target in targets:
                    rounds[target.name].append(asyncio.run(_round(target, args.sessions, args.messages)))
        finally:
            for stop in reversed(stops):
                stop()
    result["rounds"] = rounds[ours.name]
    if args.with_postfix:
        result["postfix_rounds"] = rounds["postfix"]
    if args.with_floor:
        result["floor_rounds"] = rounds["aiosmtpd-floor"]
    result["loadavg_after"] = loadavg()
    emit(result, args.out)


if __name__ == "__main__":
    main()
