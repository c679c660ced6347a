"""``flgate console``'s options, checked before anything starts."""

from __future__ import annotations

import pytest

from gateway.cli import main
from gateway.cli.common import EXIT_USAGE
from gateway.cli.console_cmd import parse_listen
from gateway.console.access import ALLOW_NETWORK_FLAG
from gateway.core.exceptions import ConfigError


def test_listen_addresses_parse_with_ipv6_in_brackets() -> None:
    assert parse_listen("127.0.0.1:8088") == ("127.0.0.1", 8088)
    assert parse_listen("[::1]:0") == ("::1", 0)
    for bad in ("8088", "127.0.0.1:", "127.0.0.1:http", ":8088", "127.0.0.1:70000"):
        with pytest.raises(ConfigError):
            parse_listen(bad)


def test_a_network_address_without_the_flag_is_a_usage_error_naming_the_risk(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["console", "--listen", "0.0.0.0:0"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert ALLOW_NETWORK_FLAG in err
    assert "plain HTTP" in err
