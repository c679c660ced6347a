"""Reliable messaging: retries with one message id, at-most-once execution per id.

The site's :class:`ReliableSender` retries transport failures with the same
id until a deadline; the relay's :class:`ReliableReceiver` executes each id
once and replays the reply to duplicates, with records in a
:class:`DedupStore` that can outlive the relay process. The decisions live in
the pure :mod:`~gateway.reliable.protocol`; the contract is README.md's Reliability section.
"""

from .protocol import (
    DEFAULT_POLICY,
    Cached,
    Decision,
    Execute,
    GiveUp,
    Join,
    ReceiverProtocol,
    Refuse,
    Retry,
    RetryPolicy,
    SenderProtocol,
)
from .receiver import LostOutcome, ReliableReceiver, dedup_key, reached_upstream
from .sender import GiveUpError, ReliableSender
from .store import DedupStore, DedupStoreError, MemoryDedupStore, Record, SqliteDedupStore, State

__all__ = [
    "DEFAULT_POLICY",
    "Cached",
    "Decision",
    "DedupStore",
    "DedupStoreError",
    "Execute",
    "GiveUp",
    "GiveUpError",
    "Join",
    "LostOutcome",
    "MemoryDedupStore",
    "ReceiverProtocol",
    "Record",
    "Refuse",
    "ReliableReceiver",
    "ReliableSender",
    "Retry",
    "RetryPolicy",
    "SenderProtocol",
    "SqliteDedupStore",
    "State",
    "dedup_key",
    "reached_upstream",
]
