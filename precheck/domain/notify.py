"""Notifications, the pure part: targets checked and redacted, what is owed, the retry schedule,
the payload of a run's end and its Standard Webhooks signature."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import attrs

from precheck.errors import Invalid, TargetRefused
from precheck.events.types import Subscription
from precheck.projections.runs import RunRecord

KINDS = ("webhook", "email")
MAX_SUBSCRIPTIONS = 8  # per run
MAX_TARGET = 2000  # characters of a URL or an address
# A plain address: a local part without spaces or angle brackets, an @, a dotted domain.
EMAIL = re.compile(
    r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@([A-Za-z0-9-]{1,63}(\.[A-Za-z0-9-]{1,63})+)"
)
SECRET_PREFIX = "whsec_"


@attrs.frozen
class Policy:
    """What an operator allows: webhook hosts (names, `*.suffix` names, IPs or CIDRs) and
    email domains (none listed: any)."""

    allowed_hosts: tuple[str, ...] = ()
    allowed_email_domains: tuple[str, ...] = ()

    @property
    def networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """The listed IPs and CIDRs."""
        return tuple(n for h in self.allowed_hosts if (n := _network(h)) is not None)


def _network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


def subscription(raw: object) -> Subscription:
    """One item of a request's `notify`: `{"webhook": URL}` or `{"email": ADDRESS}`, checked
    for its shape (not yet against the policy)."""
    if not isinstance(raw, dict) or len(raw) != 1:
        raise Invalid('each notify item must be an object with one key: "webhook" or "email"')
    ((kind, target),) = raw.items()
    if kind not in KINDS:
        raise Invalid(f'notify: unknown kind {kind!r}; use "webhook" or "email"')
    if not isinstance(target, str) or not 0 < len(target) <= MAX_TARGET:
        raise Invalid(f"notify: {kind} must be a string of 1 to {MAX_TARGET} characters")
    if kind == "webhook":
        _url_host(target)
    elif EMAIL.fullmatch(target) is None:
        raise Invalid(f"notify: {redact_email(target)!r} is not an email address")
    return Subscription(kind, target)


def subscriptions(raw: object) -> tuple[Subscription, ...]:
    """A request's whole `notify` list, checked for its shape."""
    if not isinstance(raw, list):
        raise Invalid("notify must be a list")
    if len(raw) > MAX_SUBSCRIPTIONS:
        raise Invalid(f"notify lists at most {MAX_SUBSCRIPTIONS} targets")
    return tuple(subscription(item) for item in raw)


def _url_host(url: str) -> str:
    if any(c.isspace() or ord(c) < 32 for c in url):
        raise Invalid("notify: a webhook URL has no spaces or control characters")
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 (a bad port raises here)
    except ValueError:
        raise Invalid("notify: the webhook is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not host:
        raise Invalid("notify: a webhook must be an http:// or https:// URL with a host")
    return host.lower()


def check(sub: Subscription, policy: Policy) -> None:
    """Refuse (`TargetRefused`) a target the operator does not allow."""
    if sub.kind == "webhook":
        host = _url_host(sub.target)
        if not host_allowed(host, policy):
            if not policy.allowed_hosts:
                raise TargetRefused("webhooks are off: notify.allowed_hosts lists no host")
            raise TargetRefused(f"notify: webhook host {host} is not in notify.allowed_hosts")
    else:
        domain = sub.target.rpartition("@")[2].lower()
        allowed = {d.lower() for d in policy.allowed_email_domains}
        if allowed and domain not in allowed:
            raise TargetRefused(f"notify: email domain {domain} is not in allowed_email_domains")


def host_allowed(host: str, policy: Policy) -> bool:
    """Is a webhook URL's host listed: by name, by a `*.` suffix, or as an IP in a listed CIDR?"""
    host = host.lower()
    address = _address(host)
    if address is not None:
        return any(address in n for n in policy.networks)
    for entry in policy.allowed_hosts:
        entry = entry.lower()
        if entry == host or (entry.startswith("*.") and host.endswith(entry[1:])):
            return True
    return False


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def address_allowed(address: str, policy: Policy) -> bool:
    """May a webhook connect to `address` (what its host resolved to)? A public address, or
    one inside a listed IP or CIDR: loopback, link-local and private ones only when listed."""
    ip = _address(address)
    if ip is None:
        return False
    if any(ip in n for n in policy.networks):
        return True
    return ip.is_global and not ip.is_multicast


def redact(sub: Subscription) -> str:
    """A target as it may be shown and logged: no user info, no query string, no fragment."""
    return redact_url(sub.target) if sub.kind == "webhook" else redact_email(sub.target)


def redact_url(url: str) -> str:
    """`url` without user info, query string or fragment."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(not a URL)"
    if ":" in host:
        host = f"[{host}]"
    return urlunsplit((parts.scheme, host + port, parts.path, "", ""))


def redact_email(address: str) -> str:
    """An address shown whole: it is the owner's own, and carries no secret; cut when long."""
    return address[:MAX_TARGET]


def message_id(run_id: str, delivery: int) -> str:
    """The stable `webhook-id` of a run's end to delivery `delivery`: the same on every
    attempt and redelivery, so a receiver can drop duplicates."""
    return f"msg_{run_id}_{delivery}"


@attrs.frozen
class Schedule:
    """Retries: the first after `first_seconds`, doubling up to `max_seconds`, none started
    later than `give_up_seconds` after the first attempt."""

    first_seconds: float = 30
    max_seconds: float = 6 * 3600
    give_up_seconds: float = 24 * 3600

    def delay(self, failures: int) -> float:
        """Seconds to wait after `failures` failed attempts in a row (at least 1)."""
        return min(self.max_seconds, self.first_seconds * 2.0 ** min(failures - 1, 64))

    def gives_up(self, failures: int, first_at: datetime, now: datetime) -> bool:
        """Is the attempt that just failed (the `failures`th in a row) the last one?"""
        elapsed = (now - first_at).total_seconds()
        return elapsed + self.delay(failures) > self.give_up_seconds


def secret_key(secret: str) -> bytes:
    """The HMAC key of a configured secret: `whsec_<base64>` decoded, else its UTF-8 bytes."""
    if secret.startswith(SECRET_PREFIX):
        try:
            return base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
        except binascii.Error:
            raise ValueError("a whsec_ secret must be base64 after its prefix") from None
    return secret.encode()


def signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header: `v1,` and the base64 HMAC-SHA256 of `id.timestamp.body`."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def headers(key: bytes, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(key, msg_id, timestamp, body),
        "Content-Type": "application/json",
    }


EVENT_TYPE = "precheck.ended"


def payload(run: RunRecord, base_url: str) -> dict[str, Any]:
    """The JSON body of a run's end, as Standard Webhooks shape it: `type`, `timestamp`, `data`."""
    v = run.result
    base = base_url.rstrip("/")
    api = f"{base}/api/v1/prechecks/{run.id}"
    ended = run.finished_at or run.created
    return {
        "type": EVENT_TYPE,
        "timestamp": _iso(ended),
        "data": {
            "id": run.id,
            "status": str(run.status),
            "exit_code": run.exit_code,
            "error": run.error,
            "verdict": None
            if v is None
            else {
                "passed": v.passed,
                "failed_step": v.failed_step,
                "classification": v.classification,
                "deferred_errors": dict(v.deferred_errors),
            },
            "input": {"name": run.input.name, "sha256": run.input.sha256},
            "top_cell": run.top_cell,
            "image_id": run.image_id or None,
            "image_digest": run.image_digest or None,
            # A re-check the server queued for a newer image (told only when its verdict
            # changed) names the run whose verdict it changed.
            "reason": run.reason,
            "recheck_of": run.recheck_of or None,
            "created": _iso(run.created),
            "started": _iso(run.started_at),
            "finished": _iso(run.finished_at),
            # The peak memory of the attempt that ended it: what a retry on a bigger engine needs.
            "resources": None
            if run.peak is None
            else {
                "peak_memory_bytes": run.peak.memory_bytes,
                "memory_limit_bytes": run.peak.limit_bytes,
                "peak_cpu_percent": run.peak.cpu_percent,
            },
            "links": {
                "page": f"{base}/#/runs/{run.id}",
                "run": api,
                "log": f"{api}/logs",
                "output": f"{api}/output",
                "reports": f"{api}/reports",
            },
        },
    }


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.isoformat().replace("+00:00", "Z")


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.2f}"


def summary_lines(body: dict[str, Any]) -> Sequence[str]:
    """The few lines a person reads about a run's end (an email's text)."""
    payload = body["data"]
    v = payload["verdict"]
    lines = [f"Precheck {payload['id']} {payload['status']}: {payload['input']['name']}"]
    if v is not None:
        lines.append("Passed." if v["passed"] else "Did not pass.")
        if v["failed_step"]:
            lines.append(f"Failed step: {v['failed_step']}")
        if v["classification"]:
            lines.append(f"Failure: {v['classification']}")
        for check_name, count in sorted(v["deferred_errors"].items()):
            lines.append(f"{check_name}: {count} error{'s' if count != 1 else ''}")
    if payload.get("error"):
        lines.append(f"Error: {payload['error']}")
    if r := payload.get("resources"):
        peak, limit = _gib(r["peak_memory_bytes"]), _gib(r["memory_limit_bytes"])
        lines.append(f"Peak memory: {peak} of {limit} GiB")
    if image := payload.get("image_digest") or payload.get("image_id"):
        lines.append(f"Image: {image}")  # what a re-run must match to give the same verdict
    lines.append(f"Run page: {payload['links']['page']}")
    return lines
