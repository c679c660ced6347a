"""Who may use the console (pure rules; the aiohttp middleware in ``app.py`` applies them).

The console acts with the admin's certificate, so anyone who can drive it is that
admin to the relay. Three locks keep other people out, as Jupyter does:

- it listens on loopback unless started with a flag that names the risk;
- every request carries a random token (from the printed URL, then a cookie);
  a POST must also send it in a header, which another site's page cannot set
  (a cookie alone would let any page the admin opens post to the console);
- the ``Host`` header must name the console itself, so a web page whose domain
  re-resolves to 127.0.0.1 (DNS rebinding) cannot read its answers.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets

from ..core.exceptions import ConfigError

TOKEN_QUERY = "token"
TOKEN_COOKIE = "flgate_console"
TOKEN_HEADER = "X-Flgate-Token"
ALLOW_NETWORK_FLAG = "--allow-network-access-without-tls"
"""The flag that lets the console listen beyond loopback: its pages, the token and
the admin's jobs then cross the network as plain HTTP."""

LOOPBACK_NAMES = ("localhost",)


def new_token() -> str:
    return secrets.token_urlsafe(32)


def token_ok(given: str | None, token: str) -> bool:
    """Whether ``given`` is the console's token (compared in constant time)."""
    return given is not None and hmac.compare_digest(given.encode(), token.encode())


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_listen_host(host: str, *, allow_network: bool) -> None:
    """Refuse a non-loopback address unless the risk was accepted by name."""
    if is_loopback(host) or allow_network:
        return
    raise ConfigError(
        f"the console would listen on {host}, beyond this machine: anyone who reaches it "
        "and learns the token acts with your admin certificate, over plain HTTP. Listen on "
        f"127.0.0.1 (and use an SSH tunnel), or accept the risk with {ALLOW_NETWORK_FLAG}"
    )


def host_ok(header: str | None, listen_host: str, port: int, *, allow_network: bool) -> bool:
    """Whether a request's ``Host`` header names this console (any host when it was
    asked to serve the network, which has no single name)."""
    if allow_network:
        return True
    if not header:
        return False
    name, _, given_port = header.rpartition(":") if not header.endswith("]") else (header, "", "")
    if not name or not given_port.isdigit() or int(given_port) != port:
        return False
    return is_loopback(name) or name.strip("[]") == listen_host.strip("[]")
