"""Facts of Flower's Fleet API, as pure functions: names, paths, statuses, headers.

The gateway forwards Fleet calls *by name*: a method name is derived from the
HTTP path, the gRPC method path or the GrpcAdapter message name by rule, never
looked up in a list, so a Fleet method added by the next Flower release passes
through unchanged. Anything that is not a Fleet call (Control, Runtime,
``/health``, ``/docs``) has no name here and is refused before it is forwarded.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable

HTTP_FLEET_PREFIX = "/v1/fleet/"
GRPC_FLEET_SERVICE = "flwr.proto.Fleet"
GRPC_ADAPTER_METHOD = "/flwr.proto.GrpcAdapter/SendReceive"
PROTOBUF_MEDIA_TYPE = "application/protobuf"

_METHOD_RE = re.compile(r"^[A-Z][A-Za-z0-9]{0,63}$")
_KEBAB_RE = re.compile(r"^[a-z][a-z0-9]*(?:-[a-z0-9]+)*$")
_CAMEL_SPLIT_RE = re.compile(r"(?<!^)(?=[A-Z])")

# Flower's GrpcAdapter request types carry a "Fleet" infix where the bare name
# would clash with another service's message (RegisterNodeFleetRequest).
_ADAPTER_REQUEST_SUFFIX = "Request"
_ADAPTER_RESPONSE_SUFFIX = "Response"
_ADAPTER_FLEET_INFIX = "Fleet"


# Flower's SuperNode waits 30 s for a Fleet call, but only 5 s for a heartbeat:
# the gateway's whole budget (retries included) must end before the caller gives up.
DEFAULT_CALL_BUDGET = 25.0
_SHORT_CALL_BUDGETS = {"SendNodeHeartbeat": 4.0}


REPLAYED_NOT_CACHED = frozenset({"PullObject"})
"""Fleet methods the relay runs again on a retry instead of keeping their reply.

A PullObject reads a content-addressed object, so running it twice returns
the same bytes (only Flower's traffic counter sees the second read, as when a
SuperNode retries directly). Keeping these replies would write every model
that crosses the relay into its dedup store: 5 MiB per call, about 20 ms of
the relay's event loop each, and gigabytes of disk while replies live.
"""


def call_budget(method: str) -> float:
    """Seconds the gateway may spend on ``method``, retries included."""
    return _SHORT_CALL_BUDGETS.get(method, DEFAULT_CALL_BUDGET)


def is_fleet_method(name: str) -> bool:
    """True when ``name`` can be a Fleet method name (``PullMessages``)."""
    return bool(_METHOD_RE.match(name))


def method_from_http_path(path: str) -> str | None:
    """``/v1/fleet/pull-messages`` -> ``PullMessages``; None for any other path."""
    if not path.startswith(HTTP_FLEET_PREFIX):
        return None
    segment = path[len(HTTP_FLEET_PREFIX) :]
    if not _KEBAB_RE.match(segment):
        return None
    method = "".join(part.capitalize() for part in segment.split("-"))
    # Only names that map back to the very same path are Fleet names.
    if not is_fleet_method(method) or http_path_for(method) != path:
        return None
    return method


def http_path_for(method: str) -> str:
    """``PullMessages`` -> ``/v1/fleet/pull-messages``."""
    return HTTP_FLEET_PREFIX + _CAMEL_SPLIT_RE.sub("-", method).lower()


def method_from_grpc_path(path: str) -> str | None:
    """``/flwr.proto.Fleet/PullMessages`` -> ``PullMessages``; None otherwise."""
    service, _, method = path.lstrip("/").partition("/")
    if service != GRPC_FLEET_SERVICE or not is_fleet_method(method):
        return None
    return method


def grpc_path_for(method: str) -> str:
    """``PullMessages`` -> ``/flwr.proto.Fleet/PullMessages``."""
    return f"/{GRPC_FLEET_SERVICE}/{method}"


def method_from_adapter_message(message_name: str) -> str | None:
    """``RegisterNodeFleetRequest`` -> ``RegisterNode``; None if not a request name."""
    if not message_name.endswith(_ADAPTER_REQUEST_SUFFIX):
        return None
    stem = message_name[: -len(_ADAPTER_REQUEST_SUFFIX)]
    if stem.endswith(_ADAPTER_FLEET_INFIX) and len(stem) > len(_ADAPTER_FLEET_INFIX):
        stem = stem[: -len(_ADAPTER_FLEET_INFIX)]
    return stem if is_fleet_method(stem) else None


def adapter_response_name(request_name: str) -> str:
    """``PullMessagesRequest`` -> ``PullMessagesResponse`` (Flower's naming rule)."""
    return request_name[: -len(_ADAPTER_REQUEST_SUFFIX)] + _ADAPTER_RESPONSE_SUFFIX


# --- statuses ---------------------------------------------------------------
# gRPC code numbers (grpc.StatusCode values) kept as ints so that this module
# stays free of I/O libraries.
OK = 0
CANCELLED = 1
UNKNOWN = 2
INVALID_ARGUMENT = 3
DEADLINE_EXCEEDED = 4
NOT_FOUND = 5
ALREADY_EXISTS = 6
PERMISSION_DENIED = 7
RESOURCE_EXHAUSTED = 8
FAILED_PRECONDITION = 9
ABORTED = 10
OUT_OF_RANGE = 11
UNIMPLEMENTED = 12
INTERNAL = 13
UNAVAILABLE = 14
DATA_LOSS = 15
UNAUTHENTICATED = 16

_GRPC_TO_HTTP = {
    OK: 200,
    CANCELLED: 499,
    UNKNOWN: 500,
    INVALID_ARGUMENT: 400,
    DEADLINE_EXCEEDED: 504,
    NOT_FOUND: 404,
    ALREADY_EXISTS: 409,
    PERMISSION_DENIED: 403,
    RESOURCE_EXHAUSTED: 429,
    FAILED_PRECONDITION: 412,
    ABORTED: 409,
    OUT_OF_RANGE: 400,
    UNIMPLEMENTED: 501,
    INTERNAL: 500,
    UNAVAILABLE: 503,
    DATA_LOSS: 500,
    UNAUTHENTICATED: 401,
}
_HTTP_TO_GRPC = {
    200: OK,
    400: INVALID_ARGUMENT,
    401: UNAUTHENTICATED,
    403: PERMISSION_DENIED,
    404: NOT_FOUND,
    409: ALREADY_EXISTS,
    412: FAILED_PRECONDITION,
    413: RESOURCE_EXHAUSTED,
    429: RESOURCE_EXHAUSTED,
    499: CANCELLED,
    501: UNIMPLEMENTED,
    502: UNAVAILABLE,
    503: UNAVAILABLE,
    504: DEADLINE_EXCEEDED,
}


def http_status_for_grpc(code: int) -> int:
    """HTTP status that a Flower HTTP client reads the same way as gRPC ``code``."""
    return _GRPC_TO_HTTP.get(code, 500)


def grpc_code_for_http(status: int) -> int:
    """gRPC code that a Flower gRPC client reads the same way as HTTP ``status``."""
    if status in _HTTP_TO_GRPC:
        return _HTTP_TO_GRPC[status]
    if 200 <= status < 300:
        return OK
    return INTERNAL if status >= 500 else UNKNOWN


# --- headers ----------------------------------------------------------------
# Hop-by-hop and framing headers belong to one connection, never forwarded.
_HTTP_NOT_FORWARDED = frozenset(
    {
        "host",
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "proxy-authenticate",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "content-encoding",
        "accept-encoding",
        "date",
        "server",
    }
)
_GRPC_BINARY_SUFFIX = "-bin"
# Flower's node-auth headers whose gRPC form is binary (``-bin``) and whose
# HTTP form is base64; only needed when a site and a SuperLink differ in dialect.
_FLOWER_BINARY_HEADERS = frozenset({"flwr-public-key", "flwr-signature"})


def forwardable_http_headers(headers: Iterable[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """Headers of an HTTP message worth forwarding, names lower-cased, values as they came."""
    return [
        (lower, value)
        for name, value in headers
        if (lower := name.lower()) not in _HTTP_NOT_FORWARDED
    ]


def forwardable_grpc_metadata(
    metadata: Iterable[tuple[str, str | bytes]],
) -> list[tuple[str, bytes]]:
    """gRPC metadata worth forwarding: no pseudo, ``grpc-*`` or transport keys."""
    out: list[tuple[str, bytes]] = []
    for key, value in metadata:
        key = key.lower()
        if key.startswith((":", "grpc-")) or key in {"user-agent", "content-type", "te"}:
            continue
        out.append((key, value if isinstance(value, bytes) else value.encode("utf-8")))
    return out


def grpc_headers_to_http(headers: Iterable[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """gRPC ``name-bin`` raw bytes -> HTTP ``name`` base64 (Flower's convention)."""
    out = []
    for name, value in headers:
        if name.endswith(_GRPC_BINARY_SUFFIX):
            out.append((name[: -len(_GRPC_BINARY_SUFFIX)], base64.b64encode(value)))
        else:
            out.append((name, value))
    return out


def http_headers_to_grpc(headers: Iterable[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """HTTP base64 node-auth headers -> gRPC ``-bin`` raw bytes; others unchanged."""
    out = []
    for name, value in headers:
        if name in _FLOWER_BINARY_HEADERS:
            try:
                out.append((name + _GRPC_BINARY_SUFFIX, base64.b64decode(value, validate=True)))
                continue
            except (binascii.Error, ValueError):
                pass
        out.append((name, value))
    return out
