"""The notification targets a request may ask for: its `notify` list checked against `[notify]`,
with the `[[notify.defaults]]` of its key added."""

from __future__ import annotations

from precheck.config import NotifyConfig
from precheck.domain.notify import Policy, check, subscriptions
from precheck.errors import TargetRefused
from precheck.events.types import Subscription


def notify_policy(n: NotifyConfig) -> Policy:
    """The operator's policy of `[notify]`."""
    return Policy(n.allowed_hosts, n.allowed_email_domains)


def requested(raw: object, n: NotifyConfig, owner: str) -> tuple[Subscription, ...]:
    """A request's `notify` (None: not given) checked, then the owner's defaults after it."""
    asked = () if raw is None else subscriptions(raw)
    policy = notify_policy(n)
    for sub in asked:
        if sub.kind == "email" and not n.smtp.host:
            raise TargetRefused("email is off: notify.smtp.host is not set")
        check(sub, policy)
    defaults = tuple(
        Subscription("webhook", d.webhook) if d.webhook else Subscription("email", d.email)
        for d in n.defaults
        if d.key == owner
    )
    return asked + tuple(d for d in defaults if d not in asked)
