"""Deposit end to end through SMTP submission: a professional sends an XDM package to the DMP
gateway over STARTTLS with AUTH; the message is stored, the documents are deposited and the MDN
lands in the sender's mailbox. In-process server on 127.0.0.1 (ports chosen by the system)."""

from __future__ import annotations

import asyncio
import email
import smtplib
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from email import policy
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session

from annuaire.service import add_bal
from dmp import xdm
from dmp.deposit import build_message
from dmp.hook import DMPDepositHook
from dmp.models import OID_INS_NIR_DEMO
from dmp.service import DMPService, Traits
from dmp.testing import UNKNOWN_INS, package
from mssante import demo
from mssante.auth.identity import Identity
from mssante.config import load_settings
from mssante.runtime import Runtime, initialise, open_runtime
from mssante.smtp.hooks import HookRunner
from mssante.smtp.listeners import start_smtp
from tests.mailbox import StoredMail, wait_for
from tests.test_cli import run

MARTIN = "claire.martin@demo.mssante.fr"
GATEWAY = "dmp@demo.mssante.fr"
INS = demo.PATIENTS[0]["ins"]
TRAITS: Traits = demo.PATIENTS[0]["traits"]  # qualified in the DMP by the demo set-up


@dataclass
class Server:
    runtime: Runtime
    port: int
    ca_file: str
    password: str
    data_dir: Path


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    data_dir = tmp_path / "data"
    settings = load_settings(
        None, server={"data_dir": str(data_dir)},
        smtp={"submission_port": 0, "submissions_port": 0, "relay_port": 0},
    )  # fmt: skip
    demo.demo_settings(settings)
    initialise(settings)
    document = demo.setup(settings)
    runtime = open_runtime(settings)
    service = DMPService.from_runtime(runtime)
    with Session(runtime.writer_engine) as s, s.begin():
        add_bal(s, address=GATEWAY, type="APP", structure=demo.CH["identifier"],
                responsible=demo.DURAND["idnat"], description="Passerelle DMP", actor="test")  # fmt: skip
    runtime.annuaire.invalidate()
    runtime.delivery_hooks = HookRunner([DMPDepositHook.from_runtime(runtime)])
    listeners = await start_smtp(runtime)
    port = next(item.port for item in listeners if item.name == "submission")
    password = next(a["password"] for a in document["accounts"] if a["address"] == MARTIN)
    try:
        yield Server(runtime, port, document["ca_cert"], password, data_dir)
    finally:
        for item in listeners:
            await item.close()
        await runtime.delivery_hooks.drain()
        service.notifier.close()
        runtime.close()


def _send(server: Server, raw: bytes) -> dict[str, Any]:
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as client:
        client.starttls(context=ssl.create_default_context(cafile=server.ca_file))
        client.login(MARTIN, server.password)
        return client.sendmail(MARTIN, [GATEWAY], raw)


def _xdm(ins: str = INS) -> bytes:
    return xdm.build(
        package(ins=ins, author=demo.MARTIN["idnat"], traits=TRAITS, with_pdf=True, oid=OID_INS_NIR_DEMO)
    )


@pytest.mark.parametrize(("ins", "code"), [(INS, None), (UNKNOWN_INS, 902)])
async def test_deposit_through_submission_with_mdn(server: Server, ins: str, code: int | None) -> None:
    subject = f"XDM/1.0/DDM+CR d'hospitalisation DUPONT MARIE 19800101 {ins[-4:]}"
    service = DMPService.from_runtime(server.runtime)
    demo_documents = {d.unique_id for d in service.list_documents(Identity.patient(INS), INS)}
    msg = build_message(_xdm(ins), sender=MARTIN, to=GATEWAY, subject=subject, cda_codes=["34112-3"],
                        notification_to=MARTIN)  # fmt: skip
    refused = await asyncio.to_thread(_send, server, msg.as_bytes(policy=policy.SMTP))
    assert refused == {}
    stored = StoredMail(server.data_dir)
    try:
        assert len(stored.messages(GATEWAY)) == 1  # the message itself is always delivered
        await wait_for(lambda: len(stored.messages(MARTIN)) == 1)
        [raw] = stored.messages(MARTIN)
    finally:
        stored.close()
    answer = email.message_from_bytes(raw)
    assert answer.get_content_type() == "multipart/report"
    report = answer.get_payload()[1].get_payload()[0]  # type: ignore[index,union-attr]
    if code is None:
        assert report["Disposition"] == "automatic-action/MDN-sent-automatically; processed"
        docs = [
            d for d in service.list_documents(Identity.patient(INS), INS) if d.unique_id not in demo_documents
        ]
        assert {d.format for d in docs} == {"CDA_R2", "PDF"}
        assert all(d.author_idnat == demo.MARTIN["idnat"] for d in docs)
    else:
        assert report["Disposition"].startswith(
            f"automatic-action/MDN-sent-automatically; processed/Error: {code}^"
        )
        assert str(email.header.make_header(email.header.decode_header(answer["Subject"]))).startswith(
            f"[KO Intégration système !][{code}] XDM/1.0/DDM+"
        )


async def test_send_xdm_command(server: Server, tmp_path: Path) -> None:
    zip_file = tmp_path / "IHE_XDM.ZIP"
    zip_file.write_bytes(_xdm())
    args = ["dmp", "send-xdm", str(zip_file), "--from", MARTIN, "--to", GATEWAY, "--port", str(server.port),
            "--ca-file", server.ca_file, "--subject", "XDM/1.0/DDM+CR DUPONT MARIE 19800101"]  # fmt: skip
    done = await asyncio.to_thread(run, *args, cwd=tmp_path, env={"MSSANTE_SMTP_PASSWORD": server.password})
    assert done.returncode == 0, done.stderr
    stored = StoredMail(server.data_dir)
    try:
        await wait_for(lambda: len(stored.messages(MARTIN)) == 1)
        [raw] = stored.messages(MARTIN)
        [sent] = stored.messages(GATEWAY)
    finally:
        stored.close()
    assert b"Disposition: automatic-action/MDN-sent-automatically; processed\r\n" in raw
    assert b"X-MSS-CODECDA: 34112-3\r\n" in sent and b"X-MSS-INS: O\r\n" in sent
