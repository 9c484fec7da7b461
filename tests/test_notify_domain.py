"""The pure part of notifications: signatures, targets, redaction, the schedule, what is owed."""

from __future__ import annotations

from datetime import timedelta

import pytest

from precheck.domain.commands import RedeliverNotification, decide
from precheck.domain.notify import (
    Policy,
    Schedule,
    address_allowed,
    check,
    host_allowed,
    redact_url,
    secret_key,
    signature,
    subscriptions,
)
from precheck.errors import Conflict, Invalid, NotFound, TargetRefused
from precheck.events.types import Event, NotificationFailed, NotificationSent, Subscription
from tests.factories import T0, given, run_exited, run_outputs_stored, run_queued, upload_received

HOOK = Subscription("webhook", "http://127.0.0.1:9/h")


def test_the_published_example_signs_alike() -> None:
    """The Standard Webhooks example (secret, id, timestamp, body) gives its signature."""
    key = secret_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    got = signature(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}')
    assert got == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_a_plain_secret_is_its_bytes_and_a_bad_whsec_is_refused() -> None:
    """Without the prefix the secret is used as text; `whsec_` must be followed by base64."""
    assert secret_key("plain") == b"plain"
    with pytest.raises(ValueError, match="base64"):
        secret_key("whsec_***")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://u:p@h.example.org:8443/a/b?token=x#f", "https://h.example.org:8443/a/b"),
        ("http://[::1]:8080/h?x=1", "http://[::1]:8080/h"),
        ("http://H.Example.org/", "http://h.example.org/"),
        ("http://h:99999/", "(not a URL)"),
    ],
)
def test_urls_are_shown_without_secrets(url: str, shown: str) -> None:
    """No user info, query string or fragment leaves the server's log or documents."""
    assert redact_url(url) == shown


@pytest.mark.parametrize(
    ("host", "listed", "allowed"),
    [
        ("hooks.example.org", ("hooks.example.org",), True),
        ("HOOKS.example.org", ("hooks.example.org",), True),
        ("a.ci.example.org", ("*.ci.example.org",), True),
        ("ci.example.org", ("*.ci.example.org",), False),
        ("evilci.example.org", ("*.ci.example.org",), False),
        ("10.1.2.3", ("10.0.0.0/8",), True),
        ("10.1.2.3", ("hooks.example.org",), False),
        ("::1", ("::1",), True),
        ("example.org", (), False),
    ],
)
def test_hosts_match_names_suffixes_and_networks(
    host: str, listed: tuple[str, ...], allowed: bool
) -> None:
    """A URL's host is allowed by its name, a `*.` suffix, or an IP inside a listed CIDR."""
    assert host_allowed(host, Policy(listed)) is allowed


@pytest.mark.parametrize(
    ("address", "listed", "allowed"),
    [
        ("93.184.215.14", (), True),
        ("127.0.0.1", (), False),
        ("127.0.0.1", ("127.0.0.1",), True),
        ("10.0.0.7", (), False),
        ("10.0.0.7", ("10.0.0.0/24",), True),
        ("169.254.169.254", ("hooks.example.org",), False),
        ("::1", (), False),
        ("fe80::1", (), False),
        ("fd00::1", (), False),
        ("224.0.0.1", (), False),
        ("not an address", (), False),
    ],
)
def test_private_addresses_need_their_own_listing(
    address: str, listed: tuple[str, ...], allowed: bool
) -> None:
    """Loopback, link-local, private and multicast addresses are refused unless listed."""
    assert address_allowed(address, Policy(listed)) is allowed


def test_malformed_lists_and_refused_targets() -> None:
    """Shape first (`Invalid`), then the operator's policy (`TargetRefused`, also a 400)."""
    with pytest.raises(Invalid, match="at most 8"):
        subscriptions([{"email": "a@b.org"}] * 9)
    with pytest.raises(Invalid, match="not an email address"):
        subscriptions([{"email": "a@b"}])
    with pytest.raises(Invalid):
        subscriptions([{"webhook": "http://h/" + "x" * 2000}])
    with pytest.raises(TargetRefused, match="webhooks are off"):
        check(HOOK, Policy())
    with pytest.raises(TargetRefused, match="allowed_email_domains"):
        check(Subscription("email", "a@b.org"), Policy((), ("example.org",)))
    check(Subscription("email", "a@Example.org"), Policy((), ("example.org",)))


def test_the_schedule_doubles_to_its_cap_and_gives_up_in_time() -> None:
    """30 s, 60 s, 120 s ... at most 6 h; no attempt starts past 24 h after the first."""
    s = Schedule()
    assert [s.delay(n) for n in (1, 2, 3)] == [30, 60, 120]
    assert s.delay(20) == 6 * 3600
    assert s.delay(10_000) == 6 * 3600
    assert not s.gives_up(3, T0, T0 + timedelta(minutes=5))
    assert not s.gives_up(9, T0, T0 + timedelta(hours=21))  # 21 h + 2.1 h: one more
    assert s.gives_up(9, T0, T0 + timedelta(hours=22))


def _ended_with(*notify: Subscription) -> list[Event]:
    return [
        upload_received(),
        run_queued(notify=notify),
        run_exited(),
        run_outputs_stored(),
    ]


def test_what_is_owed_follows_the_log() -> None:
    """Owed from the queueing on; a failure counts, a sent attempt settles it, a given-up
    failure too; a redelivery owes it anew with its failures forgotten; a deleted run owes
    nothing."""
    sent = NotificationSent("r1", 1, "webhook", HOOK.target, 2, "msg_r1_1", 200, 0.01, T0)
    failed = NotificationFailed("r1", 1, "webhook", HOOK.target, 1, "msg_r1_1", 500, "x", 0.0, T0)
    state = given(*_ended_with(HOOK))
    assert state.notifications.owed == {("r1", 1)}
    state = given(*_ended_with(HOOK), failed)
    d = state.notifications.get("r1", 1)
    assert d is not None and (d.failures, d.attempts, d.owed) == (1, 1, True)
    state = given(*_ended_with(HOOK), failed, sent)
    assert state.notifications.owed == set()
    run = state.runs.get("r1")
    assert run is not None and run.version == 5, "the run's record keeps its stream's version"
    redelivery = decide(RedeliverNotification("r1", 1, T0), state).events
    state = given(*_ended_with(HOOK), failed, sent, *redelivery)
    d = state.notifications.get("r1", 1)
    assert d is not None and (d.failures, d.attempts, d.owed) == (0, 2, True)
    given_up = NotificationFailed(
        "r1", 1, "webhook", HOOK.target, 1, "msg_r1_1", None, "x", 0.0, T0, gave_up=True
    )
    assert given(*_ended_with(HOOK), given_up).notifications.owed == set()


def test_redelivery_needs_an_ended_run_and_a_delivery_of_it() -> None:
    """A run still queued is 409; a delivery number it has not is 404."""
    queued = given(upload_received(), run_queued(notify=(HOOK,)))
    with pytest.raises(Conflict):
        decide(RedeliverNotification("r1", 1, T0), queued)
    ended = given(*_ended_with(HOOK))
    with pytest.raises(NotFound, match="notification 2"):
        decide(RedeliverNotification("r1", 2, T0), ended)
