"""Wiring of one server process: settings → engines, key ring, store.

Kept apart from the CLI and the listeners so that tests, benchmarks and the server build the
same objects the same way.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field

from sqlalchemy import Engine

from annuaire.lookup import Annuaire
from delegation.authz import sasl_authorizer
from delegation.grants import GrantBook
from dmp.hook import DMPDepositHook
from dmp.service import notice_channel
from mssante import audit, datadir
from mssante.audit import AuditKey
from mssante.auth.authenticator import Authenticator
from mssante.config import Settings
from mssante.crypto import KeyRing
from mssante.db import make_engine
from mssante.listening import RunningListener
from mssante.notify import Notifier
from mssante.patients.conversations import ConversationBook
from mssante.patients.hook import PatientHook
from mssante.patients.rules import PatientMailRules
from mssante.policy import Policy
from mssante.schema import require_current, upgrade
from mssante.smtp.hooks import HookRunner
from mssante.store.store import MessageStore


def initialise(settings: Settings) -> list[str]:
    """Create what a new installation needs; re-running changes nothing that exists."""
    done: list[str] = []
    data_dir = settings.data_dir
    if not data_dir.exists():
        data_dir.mkdir(parents=True, mode=datadir.DIR_MODE)
        done.append(f"created data directory {data_dir}")
    ring_path = settings.keyring_path
    if not ring_path.exists():
        KeyRing.create(ring_path)
        done.append(f"created key ring {ring_path} (mode 0600) — back it up: without it mail is unreadable")
    audit.bind(settings.database_url, AuditKey.from_ring_file(ring_path))
    engine = make_engine(settings.database_url)
    upgrade(engine)
    engine.dispose()
    datadir.secure(data_dir, settings.database_url, ring_path)
    done.append("database schema is current")
    return done


@dataclass(frozen=True)
class WorkerSlot:
    """This process's place among the worker processes of one server (``server.workers``)."""

    index: int  # 0 is the primary: it alone runs the web, directory updates and node identity
    count: int
    group: str  # names the server (its supervisor's pid) in the workers' feed addresses
    ready_fd: int = -1  # a pipe to the supervisor: written once every listener is up

    @property
    def primary(self) -> bool:
        return self.index == 0

    def serving(self) -> None:
        """Tell the supervisor this worker started (one that dies before never will)."""
        if self.ready_fd >= 0:
            os.write(self.ready_fd, b"1")
            os.close(self.ready_fd)


@dataclass
class Runtime:
    """The long-lived objects of a process; ``close()`` releases them."""

    settings: Settings
    engine: Engine
    writer_engine: Engine
    keyring: KeyRing
    store: MessageStore
    annuaire: Annuaire
    authenticator: Authenticator | None
    policy: Policy | None
    delivery_hooks: HookRunner = field(default_factory=lambda: HookRunner([]))
    extras: dict[str, object] = field(default_factory=dict)
    notifier: Notifier | None = None  # one per process: patient and DMP notifications
    grants: GrantBook | None = None  # delegations and ORG memberships in force
    # The bound public listeners, once ``serve`` started them: what autoconfiguration tells
    # clients (the real ports, even when 0 was configured).
    listeners: list[RunningListener] = field(default_factory=list)
    worker: WorkerSlot | None = None  # None: the server is this one process

    @property
    def delivers_queue(self) -> bool:
        """This process is the submission queue's delivery process (``smtp.acknowledge =
        "queued"``): the worker after the serving ones, which binds no port."""
        return self.worker is not None and self.worker.index >= self.settings.server.workers

    @property
    def lease_name(self) -> str:
        """The name this process's outbound-queue leases carry: the node's, with the worker's
        number after the first (a restarting worker frees its own leases, not a sibling's)."""
        hostname = self.settings.server.hostname
        return hostname if self.worker is None or self.worker.primary else f"{hostname}/{self.worker.index}"

    def close(self) -> None:
        if self.authenticator is not None:
            self.authenticator.close()
        self.store.close()
        self.engine.dispose()
        self.writer_engine.dispose()
        if self.notifier is not None:
            self.notifier.close()


def open_runtime(settings: Settings, *, check_schema: bool = True) -> Runtime:
    """Open the database and key ring; refuse an outdated schema or a missing key ring."""
    engine = make_engine(
        settings.database_url,
        echo=settings.database.echo,
        pool_size=settings.database.pool_size,
        prepare_threshold=settings.database.prepare_threshold,
    )
    if check_schema:
        require_current(engine)
    keyring = KeyRing.load(settings.keyring_path)
    audit.bind(settings.database_url, AuditKey.from_ring(keyring))
    # An installation made by an older version may have left group/other permissions.
    datadir.secure(settings.data_dir, settings.database_url, settings.keyring_path)
    writer_engine = make_engine(
        settings.database_url,
        writer=True,
        echo=settings.database.echo,
        prepare_threshold=settings.database.prepare_threshold,
    )
    store = MessageStore(
        engine,
        writer_engine,
        keyring,
        chunk_size=settings.storage.chunk_size,
        group_commit=settings.storage.group_commit,
        max_batch=settings.storage.max_batch,
        default_quota=settings.storage.default_quota_mb * 1024 * 1024 or None,
    )
    annuaire = Annuaire(engine)
    notifier = Notifier.for_settings(settings, annuaire)
    patient_rules = PatientMailRules(annuaire, ConversationBook(engine))
    grants = GrantBook(engine)
    policy = Policy(annuaire, settings.server.domains, patient_rules=patient_rules, grants=grants)
    authenticator = Authenticator(
        engine, settings, writer_engine=writer_engine, keyring=keyring, authorize=sasl_authorizer(policy)
    )
    channel = functools.partial(notice_channel, engine)  # the patient's choice of notice channel
    hooks = HookRunner([PatientHook(annuaire, notifier, channel)])
    runtime = Runtime(settings, engine, writer_engine, keyring, store, annuaire, authenticator, policy, hooks)
    runtime.notifier = notifier
    runtime.grants = grants
    hooks.hooks.append(DMPDepositHook.from_runtime(runtime))
    return runtime
