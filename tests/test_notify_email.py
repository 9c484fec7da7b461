"""Email on a run's end through a real SMTP server on loopback: plain, STARTTLS with a login,
and a refused recipient retried; every attempt an event."""

from __future__ import annotations

import asyncio
import email
import email.policy
import socket
import threading
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from pytest_aiohttp import AiohttpClient

from precheck.app import create_app
from precheck.config import Config
from precheck.events.types import NotificationFailed, NotificationSent
from tests.engines import make_tls
from tests.layouts import gds
from tests.notify_receivers import end_run, until_logged

FAST = {"retry_first_seconds": 0.2, "retry_max_seconds": 1, "timeout_seconds": 5}


@attrs.define
class Mailbox:
    """What the SMTP server received, and how: each message with whether it came over TLS."""

    messages: list[tuple[EmailMessage, bool, str]] = attrs.field(factory=list)
    refuse_first: int = 0  # recipients refused before any is taken
    arrived: threading.Event = attrs.field(factory=threading.Event)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        if self.refuse_first > 0:
            self.refuse_first -= 1
            return "550 no such mailbox here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        data = session.auth_data
        login = data.login.decode() if session.authenticated and data is not None else ""
        self.messages.append((msg, session.ssl is not None, login))
        self.arrived.set()
        return "250 Message accepted"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _login(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
        b"precheck",
        b"pw",
    )
    return AuthResult(success=ok, auth_data=auth_data)


@pytest.fixture
def smtp_server(tmp_path: Path) -> Iterator[Callable[..., tuple[Mailbox, int, Path | None]]]:
    """Factory: a real SMTP server on 127.0.0.1; `tls=True` offers (and requires) STARTTLS
    with a certificate of a new authority, and takes the login precheck/pw."""
    controllers: list[Controller] = []

    def start(*, tls: bool = False) -> tuple[Mailbox, int, Path | None]:
        box, port = Mailbox(), _free_port()
        kwargs: dict[str, Any] = {}
        ca = None
        if tls:
            import ssl

            files = make_tls(tmp_path / "smtp-tls", "smtp")
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(files.cert, files.key)
            kwargs = {
                "tls_context": context,
                "require_starttls": True,
                "authenticator": _login,
                "auth_require_tls": True,
            }
            ca = files.ca
        controller = Controller(box, hostname="127.0.0.1", port=port, **kwargs)
        controller.start()
        controllers.append(controller)
        return box, port, ca

    yield start
    for c in controllers:
        c.stop()


async def _queue_ended_run(client: Any, to: str, status: str = "failed") -> str:
    form = aiohttp.FormData()
    form.add_field("file", gds(), filename="chip.gds")
    upload_id = (await (await client.post("/api/v1/uploads", data=form)).json())["Id"]
    body = {"upload_id": upload_id, "top_cell": "chip_top", "notify": [{"email": to}]}
    r = await client.post("/api/v1/prechecks", json=body)
    assert r.status == 200, await r.text()
    run_id: str = (await r.json())["Id"]
    await end_run(client.app, run_id, status)
    return run_id


async def _arrived(box: Mailbox, count: int = 1) -> None:
    async with asyncio.timeout(15):
        while len(box.messages) < count:
            box.arrived.clear()
            await asyncio.to_thread(box.arrived.wait, 1)


async def test_the_email_of_a_failed_run_says_why_and_links_its_page(
    aiohttp_client: AiohttpClient,
    make_config: Callable[..., Config],
    smtp_server: Callable[..., tuple[Mailbox, int, Path | None]],
) -> None:
    """A plain SMTP server gets one message, text and HTML, with the verdict, the failed
    step, the counts and the run's page; `notification.sent` records the server's yes."""
    box, port, _ = smtp_server()
    notify = {"smtp": {"host": "127.0.0.1", "port": port, "from": "pc@example.org"}, **FAST}
    client = await aiohttp_client(create_app(make_config(notify=notify), run_containers=False))
    run_id = await _queue_ended_run(client, "dev@example.org")
    await _arrived(box)
    ((msg, over_tls, _),) = box.messages
    assert not over_tls
    assert msg["To"] == "dev@example.org" and msg["From"] == "pc@example.org"
    assert "failed" in msg["Subject"] and "chip.gds" in msg["Subject"]
    text = msg.get_body(("plain",))
    html = msg.get_body(("html",))
    assert text is not None and html is not None
    words = text.get_content()
    assert "Failed step: KLayout.DRC" in words
    assert "KLayout.DRC: 3 errors" in words
    assert f"/#/runs/{run_id}" in words
    assert f"/#/runs/{run_id}" in html.get_content()
    (sent,) = await until_logged(client.app, bool)
    assert isinstance(sent, NotificationSent)
    assert (sent.kind, sent.target, sent.status_code, sent.attempt) == (
        "email",
        "dev@example.org",
        250,
        1,
    )


async def test_starttls_and_a_login(
    aiohttp_client: AiohttpClient,
    make_config: Callable[..., Config],
    smtp_server: Callable[..., tuple[Mailbox, int, Path | None]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With `starttls` the connection is upgraded (the server requires it) before the login
    (password from the environment) and the message."""
    box, port, ca = smtp_server(tls=True)
    monkeypatch.setenv("TEST_SMTP_PASSWORD", "pw")
    smtp = {
        "host": "127.0.0.1",
        "port": port,
        "starttls": True,
        "user": "precheck",
        "password": "${TEST_SMTP_PASSWORD}",
        "ca_file": str(ca),
    }
    client = await aiohttp_client(
        create_app(make_config(notify={"smtp": smtp, **FAST}), run_containers=False)
    )
    await _queue_ended_run(client, "dev@example.org", "completed")
    await _arrived(box)
    ((msg, over_tls, login),) = box.messages
    assert over_tls and login == "precheck"
    assert "Passed." in (msg.get_body(("plain",)) or msg).get_content()


async def test_a_refused_recipient_is_retried(
    aiohttp_client: AiohttpClient,
    make_config: Callable[..., Config],
    smtp_server: Callable[..., tuple[Mailbox, int, Path | None]],
) -> None:
    """A 550 for the recipient is a failed attempt with its code; the retry delivers."""
    box, port, _ = smtp_server()
    box.refuse_first = 1
    notify = {"smtp": {"host": "127.0.0.1", "port": port}, **FAST}
    client = await aiohttp_client(create_app(make_config(notify=notify), run_containers=False))
    await _queue_ended_run(client, "dev@example.org")
    await _arrived(box)
    failed, sent = await until_logged(client.app, lambda es: len(es) == 2)
    assert isinstance(failed, NotificationFailed) and isinstance(sent, NotificationSent)
    assert failed.status_code == 550 and "550" in failed.error
    assert box.messages[0][0]["From"].startswith("precheck@")


def test_a_file_name_cannot_add_mail_headers() -> None:
    """The client's file name goes into the subject as one line: no header can be injected."""
    from precheck.service.delivery import message

    data = {
        "id": "r1",
        "status": "failed",
        "error": "",
        "verdict": None,
        "input": {"name": "chip.gds\r\nBcc: someone@example.org", "sha256": "00"},
        "links": {"page": "http://127.0.0.1/#/runs/r1"},
    }
    msg = message("pc@example.org", "dev@example.org", {"data": data})
    assert msg["Bcc"] is None
    assert "\n" not in msg["Subject"] and "Bcc" in msg["Subject"]
