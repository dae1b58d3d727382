"""Messages every job type shares: a key holder's bundle, a sealed contribution, the abort.

Protocol messages are frozen dataclasses whose fields travel as Flower records
(:mod:`fedprop.apps.records`). The ones here are used by more than one protocol
(:mod:`~fedprop.protocols.hfl`, :mod:`~fedprop.protocols.analytics`); each protocol
defines the rest next to its roles.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["AbortReply", "AbortRequest", "ContributionReply", "KeysReply"]


@dataclass(frozen=True)
class KeysReply:
    """The key holder's bundle (other parties answer with empty bytes)."""

    party: str
    bundle: bytes


@dataclass(frozen=True)
class ContributionReply:
    """A node's sealed, signed vector."""

    party: str
    payload: bytes
    signature: bytes


@dataclass(frozen=True)
class AbortRequest:
    """The coordinator stopped the job: which step failed at which parties (no detail of
    any party's error reaches the others). ``spec`` is the job's or query's text."""

    spec: str
    reason: str


@dataclass(frozen=True)
class AbortReply:
    """A node's acknowledgement that it dropped the job."""

    party: str
