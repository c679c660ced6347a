"""A synthetic SuperNode: Flower's Fleet calls over HTTP, timed, without flwr.

It does what a flwr 1.41 SuperNode does on the wire (node lifecycle, signed
headers on every call, the same request bodies), so the SuperLink treats it as
a real node; but it is a coroutine, so one process can be 200 nodes at once.
The same node may call through any path (directly or through an LGS): the
SuperLink knows a node by its key, not by the connection it came on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TypeVar

import aiohttp
from google.protobuf.message import Message as ProtoMessage

from ..core import fleet
from ..core.exceptions import GatewayError
from ..proto.bench_fleet_pb2 import (
    ActivateNodeRequest,
    ActivateNodeResponse,
    ConfirmMessageReceivedRequest,
    ConfirmMessageReceivedResponse,
    DeactivateNodeRequest,
    DeactivateNodeResponse,
    Node,
    PullMessagesRequest,
    PullMessagesResponse,
    PullObjectRequest,
    PullObjectResponse,
    PushMessagesRequest,
    PushMessagesResponse,
    PushObjectRequest,
    PushObjectResponse,
    RegisterNodeFleetRequest,
    RegisterNodeFleetResponse,
    SendNodeHeartbeatRequest,
    SendNodeHeartbeatResponse,
    UnregisterNodeFleetRequest,
    UnregisterNodeFleetResponse,
)
from .wire import HEARTBEAT_INTERVAL, NodeKey, runtime_headers

R = TypeVar("R", bound=ProtoMessage)

CALL_TIMEOUT = 30.0
"""Flower's SuperNode waits 30 s for a Fleet call (5 s for a heartbeat)."""
HEARTBEAT_TIMEOUT = 5.0


class FleetCallError(GatewayError):
    """A Fleet call answered with a status other than 200."""

    def __init__(self, method: str, status: int, detail: str) -> None:
        super().__init__(f"{method} answered HTTP {status}: {detail}")
        self.method = method
        self.status = status


class NotStoredError(FleetCallError):
    """PushObject answered 200 but the SuperLink did not store the object."""


@dataclass(frozen=True)
class Endpoint:
    """Where Fleet calls go: the SuperLink itself or a site's LGS."""

    name: str
    """``direct``, or the transport scheme of a gateway path (``grpcs``...), with a variant
    after a comma (``grpcs, metrics off``)."""
    address: str
    """host:port of the Fleet API (the SuperLink's or the LGS's)."""

    @property
    def base_url(self) -> str:
        return f"http://{self.address}"


@dataclass
class SyntheticNode:
    """One node's identity; ``node_id`` is set by :meth:`FleetClient.join`."""

    key: NodeKey = field(default_factory=NodeKey)
    node_id: int = 0

    @property
    def node(self) -> Node:
        return Node(node_id=self.node_id)


class FleetClient:
    """Sends Fleet calls for any number of synthetic nodes over one HTTP pool."""

    def __init__(self, session: aiohttp.ClientSession, *, flower_version: str) -> None:
        self._session = session
        self._static_headers = {
            "content-type": fleet.PROTOBUF_MEDIA_TYPE,
            "accept": fleet.PROTOBUF_MEDIA_TYPE,
            **runtime_headers(flower_version),
        }
        self._timeouts = {
            t: aiohttp.ClientTimeout(total=t) for t in (CALL_TIMEOUT, HEARTBEAT_TIMEOUT)
        }

    async def call(
        self,
        endpoint: Endpoint,
        node: SyntheticNode,
        method: str,
        request: ProtoMessage,
        response_type: type[R],
        *,
        timeout: float = CALL_TIMEOUT,
    ) -> tuple[R, float]:
        """One Fleet call; returns the parsed answer and its wall time in seconds.

        The time covers sending the body and reading the whole answer, not
        building and signing the request (a SuperNode's own work).
        """
        body = request.SerializeToString(deterministic=True)
        headers = {**self._static_headers, **node.key.headers()}
        url = endpoint.base_url + fleet.http_path_for(method)
        client_timeout = self._timeouts.get(timeout) or aiohttp.ClientTimeout(total=timeout)
        started = time.perf_counter()
        try:
            async with self._session.post(
                url, data=body, headers=headers, timeout=client_timeout
            ) as response:
                data = await response.read()
                status = response.status
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise FleetCallError(method, 0, f"{endpoint.name} {url}: {exc!r}") from exc
        elapsed = time.perf_counter() - started
        if status != 200:
            raise FleetCallError(method, status, _detail(data))
        parsed = response_type()
        parsed.ParseFromString(data)
        return parsed, elapsed

    # --- node lifecycle (what flwr 1.41's SuperNode does) --------------------
    async def join(self, endpoint: Endpoint, node: SyntheticNode) -> None:
        """RegisterNode then ActivateNode, as a self-registering SuperNode does."""
        public_key = node.key.public_key_pem
        await self.call(
            endpoint,
            node,
            "RegisterNode",
            RegisterNodeFleetRequest(public_key=public_key),
            RegisterNodeFleetResponse,
        )
        activated, _ = await self.call(
            endpoint,
            node,
            "ActivateNode",
            ActivateNodeRequest(public_key=public_key, heartbeat_interval=HEARTBEAT_INTERVAL),
            ActivateNodeResponse,
        )
        node.node_id = activated.node_id

    async def leave(self, endpoint: Endpoint, node: SyntheticNode) -> None:
        """DeactivateNode then UnregisterNode, as a SuperNode does when it stops."""
        if not node.node_id:
            return
        await self.call(
            endpoint,
            node,
            "DeactivateNode",
            DeactivateNodeRequest(node_id=node.node_id),
            DeactivateNodeResponse,
        )
        await self.call(
            endpoint,
            node,
            "UnregisterNode",
            UnregisterNodeFleetRequest(node_id=node.node_id),
            UnregisterNodeFleetResponse,
        )
        node.node_id = 0

    async def heartbeat(self, endpoint: Endpoint, node: SyntheticNode) -> float:
        answer, seconds = await self.call(
            endpoint,
            node,
            "SendNodeHeartbeat",
            SendNodeHeartbeatRequest(node=node.node, heartbeat_interval=HEARTBEAT_INTERVAL),
            SendNodeHeartbeatResponse,
            timeout=HEARTBEAT_TIMEOUT,
        )
        if not answer.success:
            raise FleetCallError("SendNodeHeartbeat", 200, "the SuperLink does not know the node")
        return seconds

    async def pull_messages(
        self, endpoint: Endpoint, node: SyntheticNode
    ) -> tuple[PullMessagesResponse, float]:
        return await self.call(
            endpoint,
            node,
            "PullMessages",
            PullMessagesRequest(node=node.node),
            PullMessagesResponse,
        )

    async def empty_pull(self, endpoint: Endpoint, node: SyntheticNode) -> float:
        """A PullMessages that must find nothing (the idle SuperNode's poll)."""
        answer, seconds = await self.pull_messages(endpoint, node)
        if answer.messages_list:
            raise FleetCallError("PullMessages", 200, "expected no message for an idle node")
        return seconds

    # --- objects --------------------------------------------------------------
    async def pull_object(
        self, endpoint: Endpoint, node: SyntheticNode, run_id: int, object_id: str
    ) -> PullObjectResponse:
        answer, _ = await self.call(
            endpoint,
            node,
            "PullObject",
            PullObjectRequest(node=node.node, run_id=run_id, object_id=object_id),
            PullObjectResponse,
        )
        if not answer.object_found:
            raise FleetCallError("PullObject", 200, f"object {object_id} not found")
        return answer

    async def push_object(
        self,
        endpoint: Endpoint,
        node: SyntheticNode,
        *,
        run_id: int,
        session_id: str,
        object_id: str,
        content: bytes,
    ) -> None:
        answer, _ = await self.call(
            endpoint,
            node,
            "PushObject",
            PushObjectRequest(
                node=node.node,
                run_id=run_id,
                object_id=object_id,
                object_content=content,
                session_id=session_id,
            ),
            PushObjectResponse,
        )
        if not answer.stored:
            raise NotStoredError("PushObject", 200, f"the SuperLink did not store {object_id}")

    async def confirm_received(
        self, endpoint: Endpoint, node: SyntheticNode, run_id: int, message_id: str
    ) -> None:
        await self.call(
            endpoint,
            node,
            "ConfirmMessageReceived",
            ConfirmMessageReceivedRequest(
                node=node.node, run_id=run_id, message_object_id=message_id
            ),
            ConfirmMessageReceivedResponse,
        )

    async def push_messages(
        self, endpoint: Endpoint, node: SyntheticNode, request: PushMessagesRequest
    ) -> PushMessagesResponse:
        answer, _ = await self.call(endpoint, node, "PushMessages", request, PushMessagesResponse)
        return answer


def _detail(body: bytes) -> str:
    """Flower's JSON error ``detail``, or the start of the body."""
    with contextlib.suppress(ValueError):
        payload = json.loads(body)
        if isinstance(payload, dict) and "detail" in payload:
            return str(payload["detail"])
    return body[:300].decode("utf-8", "replace")


@contextlib.asynccontextmanager
async def fleet_client(flower_version: str) -> AsyncIterator[FleetClient]:
    """A client whose pool keeps one connection per concurrent call (as many nodes do)."""
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=None)
    async with aiohttp.ClientSession(
        connector=connector, auto_decompress=False, skip_auto_headers=("User-Agent",)
    ) as session:
        yield FleetClient(session, flower_version=flower_version)
