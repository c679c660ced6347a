"""Each error kind's status, the one mapping from an error to a reply, and no 502 anywhere.

Flower's retry set changed between releases; 503 and 504 are retried by every one, 401
stops the SuperNode and 403 means "run not running". So the gateway's own failures must
be 503/504 and refusals keep the statuses sites and admins rely on.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import tokenize
from pathlib import Path

import pytest

import gateway
from gateway.core import fleet
from gateway.core.envelope import upstream_reply
from gateway.core.exceptions import (
    AuthError,
    ConfigError,
    ConnectError,
    DeadlineError,
    FrameTooLargeError,
    GatewayError,
    JobError,
    MaybeDeliveredError,
    NotDeliveredError,
    ProcessError,
    ProtocolError,
    TransportError,
    UnknownJobError,
    UnknownMethodError,
)
from gateway.core.failures import reply_for_error, surely_not_delivered
from gateway.proto.envelope_pb2 import ORIGIN_GATEWAY, ORIGIN_UPSTREAM

PACKAGE = Path(gateway.__file__).parent

KINDS: list[tuple[type[GatewayError], int, int]] = [
    (GatewayError, 504, fleet.UNAVAILABLE),
    (ConfigError, 400, fleet.INVALID_ARGUMENT),
    (ProtocolError, 400, fleet.INVALID_ARGUMENT),
    (AuthError, 403, fleet.PERMISSION_DENIED),
    (UnknownMethodError, 404, fleet.NOT_FOUND),
    (JobError, 409, fleet.ALREADY_EXISTS),
    (UnknownJobError, 404, fleet.NOT_FOUND),
    (ProcessError, 409, fleet.ALREADY_EXISTS),
    (TransportError, 503, fleet.UNAVAILABLE),
    (ConnectError, 503, fleet.UNAVAILABLE),
    (DeadlineError, 504, fleet.UNAVAILABLE),
    (FrameTooLargeError, 413, fleet.RESOURCE_EXHAUSTED),
    (NotDeliveredError, 503, fleet.UNAVAILABLE),
    (MaybeDeliveredError, 504, fleet.UNAVAILABLE),
]


@pytest.mark.parametrize(("kind", "http_status", "grpc_code"), KINDS)
def test_each_kind_carries_its_status_and_grpc_code(
    kind: type[GatewayError], http_status: int, grpc_code: int
) -> None:
    assert (kind.http_status, kind.grpc_code) == (http_status, grpc_code)


@pytest.mark.parametrize(("kind", "http_status", "grpc_code"), KINDS)
def test_reply_for_error_answers_with_the_kinds_codes(
    kind: type[GatewayError], http_status: int, grpc_code: int
) -> None:
    reply = reply_for_error("m-1", kind("what went wrong"))
    assert (reply.message_id, reply.origin) == ("m-1", ORIGIN_GATEWAY)
    assert reply.detail == "what went wrong"
    assert (reply.http_status, reply.grpc_code) == (http_status, grpc_code)
    assert (reply.body, list(reply.headers)) == (b"", [])


def test_reply_for_error_takes_a_detail_that_names_the_side() -> None:
    reply = reply_for_error("m", ConnectError("refused"), detail="gateway: refused")
    assert (reply.http_status, reply.detail) == (503, "gateway: refused")


def test_a_subclass_defined_elsewhere_inherits_its_parents_status() -> None:
    class SomeTransportError(DeadlineError):
        pass

    assert reply_for_error("m", SomeTransportError("x")).http_status == 504


def test_the_docstring_tree_states_every_kinds_status() -> None:
    """The module docstring is the reference an operator reads: it must not drift."""
    import gateway.core.exceptions as module

    doc = module.__doc__ or ""
    for kind, http_status, grpc_code in KINDS:
        line = next(ln for ln in doc.splitlines() if f" {kind.__name__} " in f" {ln} ")
        names = {v: k for k, v in vars(fleet).items() if k.isupper() and isinstance(v, int)}
        assert f" {http_status} " in line and names[grpc_code] in line, line


def _all_gateway_error_kinds() -> set[type[GatewayError]]:
    for info in pkgutil.walk_packages(gateway.__path__, "gateway."):
        if not info.name.endswith("__main__"):
            importlib.import_module(info.name)
    kinds: set[type[GatewayError]] = set()
    todo: list[type[GatewayError]] = [GatewayError]
    while todo:
        kind = todo.pop()
        kinds.add(kind)
        todo.extend(kind.__subclasses__())
    return kinds


def test_no_kind_anywhere_answers_with_a_status_flower_mishandles() -> None:
    """Failures (5xx) are 503/504 with UNAVAILABLE; nothing is 401 (the SuperNode would
    shut down) or 502 (not retried by every release)."""
    kinds = _all_gateway_error_kinds()
    assert len(kinds) > len(KINDS)  # kinds from outside gateway.core were found too
    for kind in kinds:
        assert kind.http_status not in (401, 502), kind
        if kind.http_status >= 500:
            assert (kind.http_status, kind.grpc_code) in {
                (503, fleet.UNAVAILABLE),
                (504, fleet.UNAVAILABLE),
            }, kind


def test_only_the_gateways_own_503_says_not_delivered() -> None:
    assert surely_not_delivered(reply_for_error("m", NotDeliveredError("refused")))
    assert not surely_not_delivered(reply_for_error("m", MaybeDeliveredError("timeout")))
    assert not surely_not_delivered(reply_for_error("m", AuthError("no")))
    # The SuperLink's own 503 is its answer: the call reached it.
    superlink = upstream_reply("m", http_status=503, grpc_code=fleet.UNAVAILABLE)
    assert superlink.origin == ORIGIN_UPSTREAM and not surely_not_delivered(superlink)


def _sources() -> list[Path]:
    return [p for p in sorted(PACKAGE.rglob("*.py")) if "proto" not in p.relative_to(PACKAGE).parts]


def test_no_502_in_the_gateways_code() -> None:
    """502 appears only where the SuperLink's own 502 is translated between dialects."""
    found = []
    for path in _sources():
        with path.open("rb") as handle:
            for token in tokenize.tokenize(handle.readline):
                if token.type == tokenize.NUMBER and token.string == "502":
                    found.append(f"{path.relative_to(PACKAGE)}:{token.start[0]}")
    assert [f for f in found if not f.startswith("core/fleet.py:")] == []
    assert found  # the scan does see numbers: fleet's translation table has one


@pytest.mark.parametrize(
    "module",
    [
        "site/forwarder.py",
        "control/relay_api.py",
        "relay/lgc.py",
        "relay/dispatcher.py",
        "reliable/receiver.py",
    ],
)
def test_the_failure_paths_answer_only_through_reply_for_error(module: str) -> None:
    """No status picked by hand: these modules never build a gateway reply from a number."""
    tree = ast.parse((PACKAGE / module).read_text())
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert "gateway_reply" not in names | imported
    assert "reply_for_error" in imported
