"""The suite's warning filters: our own deprecations fail, a third party's are ignored narrowly."""

from __future__ import annotations

import warnings

import pytest

CLICK_MESSAGE = "'click.utils.get_binary_stream' is deprecated and will be removed in Click 9.0."


def warn_from(module: str, message: str) -> None:
    """Issue ``message`` as if the code of ``module`` had warned (a fresh registry: no 'once')."""
    warnings.warn_explicit(
        message, DeprecationWarning, f"{module.replace('.', '/')}.py", 1, module=module, registry={}
    )


def test_a_deprecation_in_the_gateways_own_code_fails_the_test() -> None:
    with pytest.raises(DeprecationWarning, match="ours"):
        warn_from("gateway.core.fleet", "ours is deprecated")


def test_clicks_deprecation_seen_through_typer_is_ignored() -> None:
    warn_from("typer", CLICK_MESSAGE)
    warn_from("typer", CLICK_MESSAGE.replace("binary", "text"))


def test_the_same_click_deprecation_from_any_other_module_still_fails() -> None:
    with pytest.raises(DeprecationWarning, match=r"click\.utils"):
        warn_from("gateway.cli", CLICK_MESSAGE)
    with pytest.raises(DeprecationWarning, match=r"click\.utils"):
        warn_from("typer_extras", CLICK_MESSAGE)


def test_another_click_deprecation_through_typer_still_fails() -> None:
    with pytest.raises(DeprecationWarning, match="LazyFile"):
        warn_from("typer", "'click.utils.LazyFile' is deprecated and will be removed in Click 9.0.")
