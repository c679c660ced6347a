"""What a flwr 1.41 SuperNode puts on the wire, rebuilt without importing flwr.

The bench's synthetic SuperNode must be indistinguishable from a real one to
the SuperLink, or the figures measure an error path. These are the facts it
rests on, read from flwr 1.41 (``flwr/supernode/fleet_http_connection.py``,
``node_auth_http_interceptor.py``, ``flwr/supercore/inflatable/``):

- Node auth: a P-384 key; every Fleet call carries ``flwr-public-key`` (base64
  of the PEM SubjectPublicKeyInfo), ``flwr-timestamp`` (``datetime.now(UTC)
  .isoformat()``) and ``flwr-signature`` (base64 of the DER ECDSA-SHA256
  signature over the timestamp's ASCII bytes).
- Objects: ``b"<Type> <child id,child id> <body length>\\x00" + body``; an
  object's id is the SHA-256 hex of those bytes. A message's object tree lists
  ids post-order (children first, the message itself last).
- A message object's body is ``Message{metadata (message_id ""), no content}``
  serialized deterministically; its one child is its RecordDict.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric import ec

from ..flower.node_auth import fleet_auth_headers, flower_public_key
from ..proto.bench_fleet_pb2 import Message, Metadata, ObjectTree, RecordDict

SUPERLINK_NODE_ID = 1
"""The node id Flower gives the SuperLink (ServerApp) side of every message."""
HEARTBEAT_INTERVAL = 30.0
"""Flower's HEARTBEAT_DEFAULT_INTERVAL; the SuperLink accepts 10 s to 1800 s."""
HEAD_BODY_DIVIDER = b"\x00"
MESSAGE_TYPE = "Message"


class ObjectFormatError(ValueError):
    """Bytes that are not a Flower object (``<head>\\x00<body>``)."""


@dataclass
class NodeKey:
    """A synthetic SuperNode's identity: its key and the headers that prove it.

    ``max_age`` lets a node reuse a signed timestamp for a moment: the
    SuperLink accepts any timestamp up to 305 s old and keeps no replay list,
    so at high call rates the bench signs at most once per ``max_age`` seconds
    instead of spending its CPU on signatures the path under test never sees.
    """

    private_key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP384R1())
    )
    max_age: float = 0.0
    _headers: dict[str, str] = field(default_factory=dict, repr=False)
    _signed_at: float = field(default=-1e9, repr=False)

    @property
    def public_key_pem(self) -> bytes:
        """The public key as Flower sends it in RegisterNode/ActivateNode bodies."""
        return flower_public_key(self.private_key.public_key())

    def headers(self) -> dict[str, str]:
        """The three node-auth headers, signed now (or within ``max_age``)."""
        now = time.monotonic()
        if not self._headers or now - self._signed_at > self.max_age:
            self._headers = fleet_auth_headers(self.private_key)
            self._signed_at = now
        return self._headers


def runtime_headers(flower_version: str) -> dict[str, str]:
    """The version headers a SuperNode adds (the SuperLink warns on a mismatch)."""
    return {
        "flwr-package-name": "flwr",
        "flwr-package-version": flower_version,
        "flwr-component-name": "SuperNode",
    }


def object_id(content: bytes) -> str:
    """A Flower object's id: the SHA-256 hex of its deflated bytes."""
    return hashlib.sha256(content).hexdigest()


def make_object(type_name: str, children: list[str], body: bytes) -> bytes:
    """Deflated object bytes: ``<type> <children> <body length>\\x00<body>``."""
    head = f"{type_name} {','.join(children)} {len(body)}".encode()
    return head + HEAD_BODY_DIVIDER + body


def object_head(content: bytes) -> tuple[str, list[str], int]:
    """(type, child ids, body length) of deflated object bytes."""
    index = content.find(HEAD_BODY_DIVIDER)
    if index < 0:
        raise ObjectFormatError("no head/body divider")
    try:
        type_name, children, length = content[:index].decode().split(" ")
        return type_name, children.split(",") if children else [], int(length)
    except ValueError as exc:
        raise ObjectFormatError(f"malformed object head: {exc}") from exc


def tree_ids(tree: ObjectTree) -> list[str]:
    """Every object id of a tree, post-order (children first), as Flower pushes them."""
    return [node.object_id for node in _post_order(tree)]


def _post_order(tree: ObjectTree) -> Iterator[ObjectTree]:
    for child in tree.children:
        yield from _post_order(child)
    yield tree


@dataclass(frozen=True)
class Reply:
    """A reply message ready for PushMessages, and its own object."""

    message: Message
    """What goes into ``PushMessagesRequest.messages_list`` (content stripped)."""
    tree: ObjectTree
    object_bytes: bytes
    """The deflated reply message object (pushed with PushObject)."""

    @property
    def message_id(self) -> str:
        return self.tree.object_id


def echo_reply(instruction: Message, tree: ObjectTree, now: float | None = None) -> Reply:
    """A reply to ``instruction`` whose content is the instruction's own content.

    This is what ``Message(msg.content, reply_to=msg)`` makes in a ClientApp:
    reply metadata as Flower fills it, the same RecordDict as the only child.
    """
    ins = instruction.metadata
    if len(tree.children) != 1:
        raise ObjectFormatError(f"message {tree.object_id} has no single content child")
    created = time.time() if now is None else now
    metadata = Metadata(
        run_id=ins.run_id,
        message_id="",
        src_node_id=ins.dst_node_id,
        dst_node_id=ins.src_node_id,
        reply_to_message_id=ins.message_id,
        group_id=ins.group_id,
        created_at=created,
        ttl=ins.created_at + ins.ttl - created,
        message_type=ins.message_type,
        src_task_id=ins.dst_task_id,
        dst_task_id=ins.src_task_id,
    )
    body = Message(metadata=metadata).SerializeToString(deterministic=True)
    content_id = tree.children[0].object_id
    reply_object = make_object(MESSAGE_TYPE, [content_id], body)
    reply_id = object_id(reply_object)
    sent = Metadata()
    sent.CopyFrom(metadata)
    sent.message_id = reply_id
    reply_tree = ObjectTree(object_id=reply_id)
    reply_tree.children.add().CopyFrom(tree.children[0])
    return Reply(
        message=Message(metadata=sent, content=RecordDict()),
        tree=reply_tree,
        object_bytes=reply_object,
    )
