"""Who is asking: API keys, the IP allowlist and the client address behind trusted proxies."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

import attrs

from precheck.config import AuthConfig

if TYPE_CHECKING:
    from precheck.projections.keys import Keys

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class AuthError(Exception):
    """Refused: `status` is 401 (no or wrong key) or 403 (address not allowed)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@attrs.frozen
class _Key:
    name: str
    sha256: bytes
    role: str


@attrs.frozen
class Identity:
    """Who a request is: the key's name (or `anonymous`, `cli`) and its role."""

    name: str
    role: str = "admin"

    @property
    def admin(self) -> bool:
        """May this caller reach everything?"""
        return self.role == "admin"


ANONYMOUS = Identity("anonymous")  # with keys optional, a request without one: today's admin
CLI = Identity("cli")  # the operator's CLI on this machine


def key_digest(key: str) -> str:
    """The `key_sha256` form of an API key."""
    return hashlib.sha256(key.encode()).hexdigest()


class Authenticator:
    """Checks a request's address and key against the `[auth]` config."""

    def __init__(
        self,
        config: AuthConfig,
        trusted_proxies: Sequence[str] = (),
        admin_token: str | None = None,
    ) -> None:
        self.required = config.required
        self._admin = hashlib.sha256(admin_token.encode()).digest() if admin_token else None
        self._allowed = [ipaddress.ip_network(n, strict=False) for n in config.allowed_ips]
        self._proxies = [ipaddress.ip_network(n, strict=False) for n in trusted_proxies]
        self._keys = [
            _Key(k.name, bytes.fromhex(k.key_sha256 or key_digest(k.key)), k.role)
            for k in config.api_keys
        ]
        self.config_roles = {k.name: k.role for k in config.api_keys}
        self.config_names = frozenset(self.config_roles)
        self.issued: Keys | None = None  # keys issued through the API: the live read model
        # When each key was last used: kept in memory only, not in the log (not per request).
        self.last_used: dict[str, datetime] = {}

    def client_address(self, peer: str, forwarded_for: str | None) -> str:
        """The client's address: the socket peer, or from `X-Forwarded-For` via trusted proxies.

        The header is read right to left, skipping trusted proxies; the first other address is
        the client. A header from an untrusted peer is ignored, since anyone can send one.
        """
        if not forwarded_for or not self._in(peer, self._proxies):
            return peer
        hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
        for hop in reversed(hops):
            if not self._in(hop, self._proxies):
                return hop if _parse(hop) is not None else peer
        return hops[0] if hops else peer

    def check_address(self, client: str) -> None:
        """Raise 403 unless the allowlist is empty or holds `client`."""
        if self._allowed and not self._in(client, self._allowed):
            raise AuthError(403, f"Forbidden: IP {client} not allowed")

    def identify(self, presented: str | None) -> Identity:
        """The key's name and role, or `anonymous` when keys are optional. Raises 401.

        With keys optional, a presented key that matches none is ignored rather than refused,
        so a client that always sends its key works against an open server too.
        """
        found = self._match(presented) if presented is not None else None
        if found is not None:
            return found
        if not self.required:
            return ANONYMOUS
        if presented is None:
            raise AuthError(401, "Unauthorized: API key required")
        raise AuthError(401, "Unauthorized: Invalid API key")

    def is_admin(self, token: str | None) -> bool:
        """Is this the token the server left for the CLI in its storage folder?"""
        if not token or self._admin is None:
            return False
        return hmac.compare_digest(hashlib.sha256(token.encode()).digest(), self._admin)

    def _match(self, presented: str) -> Identity | None:
        digest = hashlib.sha256(presented.encode()).digest()
        found = None
        for k in self._keys:  # compare against every key, in constant time each
            if hmac.compare_digest(digest, k.sha256):
                found = Identity(k.name, k.role)
        if found is None and self.issued is not None:
            record = self.issued.by_digest.get(digest.hex())
            if record is not None:
                found = Identity(record.name, record.role)
        return found

    @staticmethod
    def _in(address: str, networks: Sequence[Network]) -> bool:
        ip = _parse(address)
        return ip is not None and any(ip in n for n in networks)


def _parse(address: str) -> Address | None:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    # An IPv4 client on a dual-stack socket shows as ::ffff:a.b.c.d.
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def presented_key(authorization: str | None, api_key_header: str | None) -> str | None:
    """The key a request carries in `Authorization: Bearer` or `X-API-Key`, if any."""
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return api_key_header or None
