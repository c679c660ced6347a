"""Who may use the console: token, loopback and Host rules (pure)."""

from __future__ import annotations

import pytest

from gateway.console import access
from gateway.core.exceptions import ConfigError


def test_tokens_are_random_and_compared_exactly() -> None:
    token = access.new_token()
    assert len(token) >= 40
    assert token != access.new_token()
    assert access.token_ok(token, token)
    assert not access.token_ok(token[:-1], token)
    assert not access.token_ok(None, token)
    assert not access.token_ok("", token)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"])
def test_loopback_addresses_are_accepted_without_the_flag(host: str) -> None:
    access.check_listen_host(host, allow_network=False)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "console.example.org"])
def test_other_addresses_are_refused_naming_the_risk_and_the_flag(host: str) -> None:
    with pytest.raises(ConfigError) as refused:
        access.check_listen_host(host, allow_network=False)
    assert access.ALLOW_NETWORK_FLAG in str(refused.value)
    assert "plain HTTP" in str(refused.value)
    access.check_listen_host(host, allow_network=True)


@pytest.mark.parametrize(
    ("header", "ok"),
    [
        ("127.0.0.1:8088", True),
        ("localhost:8088", True),
        ("[::1]:8088", True),
        ("127.0.0.1:8089", False),  # another port: another service
        ("evil.example.org:8088", False),  # DNS rebinding: a foreign name on our port
        ("127.0.0.1", False),
        ("", False),
        (None, False),
    ],
)
def test_the_host_header_must_name_the_console(header: str | None, ok: bool) -> None:
    assert access.host_ok(header, "127.0.0.1", 8088, allow_network=False) is ok


def test_a_console_serving_the_network_takes_any_host_name() -> None:
    assert access.host_ok("console.example.org:8088", "0.0.0.0", 8088, allow_network=True)
