"""Fleet API naming, statuses and header rules (pure, no I/O)."""

from __future__ import annotations

import base64

import pytest

from gateway.core import fleet


@pytest.mark.parametrize(
    ("path", "method"),
    [
        ("/v1/fleet/pull-messages", "PullMessages"),
        ("/v1/fleet/send-node-heartbeat", "SendNodeHeartbeat"),
        ("/v1/fleet/get-fab", "GetFab"),
        ("/v1/fleet/confirm-message-received", "ConfirmMessageReceived"),
        # A method that does not exist yet still maps: forwarding is by name.
        ("/v1/fleet/some-future-call", "SomeFutureCall"),
    ],
)
def test_http_paths_map_to_methods_and_back(path: str, method: str) -> None:
    assert fleet.method_from_http_path(path) == method
    assert fleet.http_path_for(method) == path


@pytest.mark.parametrize(
    "path",
    [
        "/v1/control/start-run",
        "/v1/runtime/pull-messages",
        "/health",
        "/docs",
        "/v1/fleet/",
        "/v1/fleet/Pull-Messages",
        "/v1/fleet/pull-messages/extra",
        "/v1/fleet/../control/start-run",
        "/v1/fleet/pull--messages",
        "/v1/fleet/pull_messages",
        "/api/v1/fleet/pull-messages",
    ],
)
def test_non_fleet_http_paths_have_no_method(path: str) -> None:
    assert fleet.method_from_http_path(path) is None


def test_grpc_paths() -> None:
    assert fleet.method_from_grpc_path("/flwr.proto.Fleet/PullMessages") == "PullMessages"
    assert fleet.grpc_path_for("PullMessages") == "/flwr.proto.Fleet/PullMessages"
    for path in (
        "/flwr.proto.Control/StartRun",
        "/flwr.proto.ServerAppIo/PullMessages",
        "/flwr.proto.Fleet/pull",
        "/flwr.proto.Fleet/",
        "/grpc.health.v1.Health/Check",
    ):
        assert fleet.method_from_grpc_path(path) is None, path


@pytest.mark.parametrize(
    ("message", "method"),
    [
        ("RegisterNodeFleetRequest", "RegisterNode"),
        ("UnregisterNodeFleetRequest", "UnregisterNode"),
        ("PullMessagesRequest", "PullMessages"),
        ("SendNodeHeartbeatRequest", "SendNodeHeartbeat"),
        ("GetFabRequest", "GetFab"),
    ],
)
def test_adapter_message_names(message: str, method: str) -> None:
    assert fleet.method_from_adapter_message(message) == method
    assert fleet.adapter_response_name(message) == message[: -len("Request")] + "Response"


def test_adapter_rejects_non_requests() -> None:
    assert fleet.method_from_adapter_message("PullMessagesResponse") is None
    assert fleet.method_from_adapter_message("Request") is None


def test_statuses_that_steer_a_supernode_survive_both_ways() -> None:
    # 401 shuts a SuperNode down, 403 means "run not running", 503 is retried.
    for status in (200, 401, 403, 404, 503, 504):
        assert fleet.http_status_for_grpc(fleet.grpc_code_for_http(status)) == status
    assert fleet.grpc_code_for_http(502) == fleet.UNAVAILABLE
    assert fleet.grpc_code_for_http(418) == fleet.UNKNOWN
    assert fleet.http_status_for_grpc(fleet.UNAUTHENTICATED) == 401


def test_hop_by_hop_headers_are_not_forwarded() -> None:
    headers = fleet.forwardable_http_headers(
        [
            ("Host", b"x"),
            ("Content-Length", b"3"),
            ("flwr-public-key", b"YWJj"),
            ("Connection", b"k"),
        ]
    )
    assert headers == [("flwr-public-key", b"YWJj")]
    metadata = fleet.forwardable_grpc_metadata(
        [
            (":authority", "x"),
            ("grpc-timeout", "1S"),
            ("flwr-public-key-bin", b"\x00\x01"),
            ("user-agent", "grpc-python"),
            ("flwr-timestamp", "2026"),
        ]
    )
    assert metadata == [("flwr-public-key-bin", b"\x00\x01"), ("flwr-timestamp", b"2026")]


def test_node_auth_headers_cross_dialects_intact() -> None:
    raw_key, raw_sig = b"\x04\x00key", b"\x30\x45sig"
    grpc_form = [
        ("flwr-public-key-bin", raw_key),
        ("flwr-signature-bin", raw_sig),
        ("flwr-timestamp", b"2026-11-21T00:00:00"),
    ]
    http_form = fleet.grpc_headers_to_http(grpc_form)
    assert http_form == [
        ("flwr-public-key", base64.b64encode(raw_key)),
        ("flwr-signature", base64.b64encode(raw_sig)),
        ("flwr-timestamp", b"2026-11-21T00:00:00"),
    ]
    assert fleet.http_headers_to_grpc(http_form) == grpc_form
