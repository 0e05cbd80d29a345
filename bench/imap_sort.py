"""SORT and THREAD on one folder: our server against Dovecot, interleaved, cold and warm; or
``--webmail``, what a webmail sends to show a page of that folder.

Usage (root, for Dovecot's users and apt-get):
    .venv/bin/python bench/imap_sort.py [--messages 20000] [--rounds 4] [--pg-url postgresql+psycopg://...]
        [--no-dovecot] [--webmail] [--out FILE]

Both servers are started and filled as ``bench/imap_ops.py`` does (the same deterministic
messages through IMAP MULTIAPPEND, the same certificate, login and password hash; Dovecot's index
warmed by an untimed SELECT and ``FETCH 1:* (FLAGS ENVELOPE)``, ours given the same session).
Then ``--rounds`` rounds, interleaved (ours, Dovecot, ours…), each on a new connection that
selects the folder and sends once each of ``UID SORT`` by DATE, SUBJECT, FROM and REVERSE
ARRIVAL, ``UID THREAD REFERENCES`` and ``UID THREAD ORDEREDSUBJECT``. The first round is the
first time each server is asked (what it keeps for sorting is not there yet: "first" in the
JSON); the later rounds are reported as median, min and max ("then"). A webmail asks the same
SORT at every page it shows, which is what "then" measures. ``--webmail`` sends instead what
Roundcube sends at each view of a list page: the SORT, the page's FETCH (BODYSTRUCTURE and its
header field list, fifty messages, the newest page and the oldest), the unseen messages'
SEARCH and the folder's STATUS, and an ENVELOPE page as other clients ask it. Prints JSON (and ``--out FILE``)
and a summary on stderr, with the load average before and after. It measures; it does not judge.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import database, emit, loadavg
from bench._imap_servers import Dovecot, Ours
from bench.imap_ops import FOLDER, Client, fill, warm_up

COMMANDS = (
    "UID SORT (DATE) UTF-8 ALL",
    "UID SORT (SUBJECT) UTF-8 ALL",
    "UID SORT (FROM) UTF-8 ALL",
    "UID SORT (REVERSE ARRIVAL) UTF-8 ALL",
    "UID THREAD REFERENCES UTF-8 ALL",
    "UID THREAD ORDEREDSUBJECT UTF-8 ALL",
)


# Roundcube's list page (rcube_imap_generic: its fetch of a page, default list columns).
_PAGE_ITEMS = (
    "(UID RFC822.SIZE FLAGS INTERNALDATE BODYSTRUCTURE BODY.PEEK[HEADER.FIELDS (DATE FROM TO "
    "SUBJECT CONTENT-TYPE CC REPLY-TO LIST-POST DISPOSITION-NOTIFICATION-TO X-PRIORITY)])"
)


def webmail_commands(messages: int) -> tuple[str, ...]:
    return (
        "UID SORT (DATE) UTF-8 ALL",
        f"UID FETCH {messages - 49}:{messages} {_PAGE_ITEMS}",
        f"UID FETCH 1:50 {_PAGE_ITEMS}",
        "UID SEARCH UNSEEN",
        f"STATUS {FOLDER} (MESSAGES UNSEEN)",
        f"UID FETCH {messages // 2 + 1}:{messages // 2 + 50} (UID FLAGS ENVELOPE BODYSTRUCTURE)",
    )


def one_round(port: int, password: str, commands: tuple[str, ...]) -> dict[str, float]:
    """Each command once on a new connection: its milliseconds."""
    client = Client(port, password)
    client.run(f"SELECT {FOLDER}")
    times = {}
    for command in commands:
        started = time.perf_counter()
        client.run(command)
        times[command] = round((time.perf_counter() - started) * 1000, 1)
    client.close()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument(
        "--rounds", type=int, default=4, help="interleaved rounds (the first is the cold one)"
    )
    parser.add_argument("--size", type=int, default=10 * 1024, help="bytes per message")
    parser.add_argument("--fill-connections", type=int, default=4)
    parser.add_argument("--append-batch", type=int, default=100, help="messages per MULTIAPPEND")
    parser.add_argument("--pg-url", default="", help="our store on PostgreSQL (a database is created)")
    parser.add_argument("--no-dovecot", action="store_true", help="measure ours only")
    parser.add_argument("--webmail", action="store_true", help="a webmail's list page instead of SORT/THREAD")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    commands = webmail_commands(args.messages) if args.webmail else COMMANDS
    result: dict[str, Any] = {
        "benchmark": "imap_sort",
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "messages": args.messages,
        "rounds": args.rounds,
        "commands": "webmail" if args.webmail else "sort",
        "loadavg_1min_before": loadavg(),
    }
    with tempfile.TemporaryDirectory(prefix="mssante-imap-sort-") as tmp, contextlib.ExitStack() as stack:
        root = Path(tmp)
        (root / "ours").mkdir()
        url = stack.enter_context(database(args.pg_url, root / "ours" / "data" / "mssante.db"))
        ours = Ours(root / "ours", url)
        stack.callback(ours.stop)
        servers: dict[str, Any] = {"mssante": ours}
        if not args.no_dovecot:
            servers["dovecot"] = Dovecot(root / "dovecot", ours)
            stack.callback(servers["dovecot"].stop)
        for name, server in servers.items():
            result.setdefault("fill", {})[name] = fill(server.port, ours.password, 0, args.messages, args, -1)
            warm_up(server.port, ours.password)
        rounds: dict[str, list[dict[str, float]]] = {name: [] for name in servers}
        for _ in range(args.rounds):
            for name, server in servers.items():
                rounds[name].append(one_round(server.port, ours.password, commands))
        for name, taken in rounds.items():
            result[name] = {
                command: {
                    "first_ms": taken[0][command],
                    "then_ms": _summary([r[command] for r in taken[1:]]),
                }
                for command in commands
            }
        result["tracebacks"] = ours.tracebacks()
    result["loadavg_1min_after"] = loadavg()
    emit(result, args.out)
    for command in commands:
        figures = "  ".join(_line(name, result[name][command]) for name in servers)
        print(f"{command:38} {figures}", file=sys.stderr)


def _line(name: str, figures: dict[str, Any]) -> str:
    then = figures["then_ms"]
    later = f", then {then['median']} ({then['min']}–{then['max']})" if then else ""
    return f"{name}: first {figures['first_ms']}{later} ms"


def _summary(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"median": round(statistics.median(values), 1), "min": min(values), "max": max(values)}


if __name__ == "__main__":
    main()
