"""Sending one notification attempt: a signed webhook over HTTP, or an email over SMTP.

Each attempt answers an `Outcome`, never raises: the notifier records it as an event.
"""

from __future__ import annotations

import asyncio
import email.message
import email.utils
import html
import json
import socket
import ssl
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import aiosmtplib
import attrs
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from precheck.domain.notify import Policy, address_allowed, headers, redact_url, summary_lines


@attrs.frozen
class Outcome:
    """What one attempt came to: `ok` (delivered), the receiver's code if it answered, why not."""

    ok: bool
    status_code: int | None = None
    error: str = ""


class AddressRefused(OSError):
    """Every address a webhook's host resolved to is one the policy refuses."""


class _SafeResolver(AbstractResolver):
    """Resolves a webhook's host, keeping only the addresses the policy lets it reach: the
    check is on the very addresses the connection uses, so a name cannot change between a
    check and the connect."""

    def __init__(self, policy: Policy) -> None:
        self._policy = policy
        self._inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        kept = [r for r in found if address_allowed(r["host"], self._policy)]
        if not kept:
            shown = ", ".join(sorted({r["host"] for r in found}))
            raise AddressRefused(
                f"refused: {host} resolves only to addresses not allowed ({shown}): loopback,"
                " link-local and private ones need their IP or CIDR in notify.allowed_hosts"
            )
        return kept

    async def close(self) -> None:
        await self._inner.close()


class Webhooks:
    """POSTs signed bodies to allowed hosts: no redirects followed, answers read to a bound."""

    def __init__(self, policy: Policy, key: bytes, timeout: float, max_response: int) -> None:
        self.policy = policy
        self.key = key
        self.timeout = timeout
        self.max_response = max_response
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(resolver=_SafeResolver(self.policy), limit=0)
            self._session = aiohttp.ClientSession(connector=connector, trust_env=False)
        return self._session

    async def send(self, url: str, msg_id: str, body: bytes, timestamp: int) -> Outcome:
        """One attempt: 2xx within the timeout is delivered."""
        shown = redact_url(url)
        host = (urlsplit(url).hostname or "").strip("[]")
        if _is_ip(host) and not address_allowed(host, self.policy):
            return Outcome(False, None, f"refused: {host} is not an address webhooks may reach")
        try:
            async with asyncio.timeout(self.timeout):
                async with self._client().post(
                    url,
                    data=body,
                    headers=headers(self.key, msg_id, timestamp, body),
                    allow_redirects=False,
                ) as r:
                    await r.content.read(self.max_response)  # the rest is dropped unread
                    if 200 <= r.status < 300:
                        return Outcome(True, r.status)
                    why = "a redirect, not followed" if 300 <= r.status < 400 else "not a 2xx"
                    return Outcome(False, r.status, f"answered {r.status}: {why}")
        except TimeoutError:
            return Outcome(False, None, f"no answer within {self.timeout:g} s")
        except (aiohttp.ClientError, OSError, ValueError) as e:
            cause = getattr(e, "os_error", None)
            if isinstance(cause, AddressRefused):  # aiohttp wraps it, dropping its words
                return Outcome(False, None, str(cause)[:500])
            text = str(e).replace(url, shown) or type(e).__name__
            return Outcome(False, None, f"{type(e).__name__}: {text}"[:500])

    async def close(self) -> None:
        """Close the connections kept open."""
        if self._session is not None:
            await self._session.close()


def _is_ip(host: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    except OSError:
        return False
    return True


@attrs.frozen
class SmtpSettings:
    """Where and how mail goes out (from `[notify.smtp]`)."""

    host: str
    port: int = 25
    starttls: bool = False
    tls: bool = False
    user: str = ""
    password: str = ""
    sender: str = ""
    ca_file: str = ""
    timeout: float = 10


def message(sender: str, to: str, body: dict[str, Any]) -> email.message.EmailMessage:
    """The email of a run's end: a short text part and the same as HTML."""
    data = body["data"]
    lines = summary_lines(body)
    msg = email.message.EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    subject = f"Precheck {data['status']}: {data['input']['name']}"[:200]
    msg["Subject"] = "".join(c if c.isprintable() else "?" for c in subject)  # one header line
    msg["Date"] = email.utils.formatdate(usegmt=True)
    msg["Message-ID"] = email.utils.make_msgid(domain=sender.rpartition("@")[2] or None)
    msg.set_content("\n".join(lines) + "\n")
    page = html.escape(data["links"]["page"], quote=True)
    items = "".join(f"<li>{html.escape(line)}</li>" for line in lines[1:-1])
    msg.add_alternative(
        f'<p>{html.escape(lines[0])}</p><ul>{items}</ul><p><a href="{page}">The run\'s page</a></p>'
        f"<pre>{html.escape(json.dumps(data['verdict'], indent=2))}</pre>",
        subtype="html",
    )
    return msg


async def send_email(settings: SmtpSettings, to: str, body: dict[str, Any]) -> Outcome:
    """One attempt: the server accepting the message for `to` is delivered."""
    sender = settings.sender or f"precheck@{socket.gethostname()}"
    context = None
    if settings.ca_file:
        context = ssl.create_default_context(cafile=settings.ca_file)
    try:
        errors, _ = await aiosmtplib.send(
            message(sender, to, body),
            hostname=settings.host,
            port=settings.port,
            use_tls=settings.tls,
            start_tls=settings.starttls,  # never upgraded unasked, never left plain when asked
            username=settings.user or None,
            password=settings.password or None,
            timeout=settings.timeout,
            tls_context=context,
        )
    except aiosmtplib.SMTPRecipientsRefused as e:  # the one recipient, refused
        first = e.recipients[0] if e.recipients else None
        code = first.code if first is not None else None
        why = f"{first.code} {first.message}" if first is not None else str(e)
        return Outcome(False, code, f"the mail server refused the recipient: {why}"[:500])
    except aiosmtplib.SMTPResponseException as e:
        return Outcome(False, e.code, f"the mail server refused: {e.code} {e.message}"[:500])
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as e:
        return Outcome(False, None, f"{type(e).__name__}: {e}"[:500])
    if errors:
        (code, text) = next(iter(errors.values()))
        return Outcome(False, code, f"the mail server refused the recipient: {code} {text}"[:500])
    return Outcome(True, 250, "")
