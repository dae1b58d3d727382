"""Every protocol step a node answers, by Flower message type, and what job a text names.

The Flower adapters (:mod:`fedprop.apps`) look up here which request a message carries
and which reply it expects, whatever the job type; each protocol keeps its own steps and
messages next to its roles.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache

from fedprop.protocols.analytics import QUERY_REPLIES, QUERY_REQUESTS, QueryStep
from fedprop.protocols.hfl import REPLIES as HFL_REPLIES
from fedprop.protocols.hfl import REQUESTS as HFL_REQUESTS
from fedprop.protocols.hfl import Step
from fedprop.protocols.vertical import REPLIES as VERTICAL_REPLIES
from fedprop.protocols.vertical import REQUESTS as VERTICAL_REQUESTS
from fedprop.protocols.vertical import VerticalJobType, VStep

__all__ = ["REPLIES", "REQUESTS", "VERTICAL_KINDS", "JobRef", "job_of", "step_of"]

#: The request dataclass of every message type, and the reply it expects.
REQUESTS: Mapping[str, type] = {
    **{s.value: t for s, t in HFL_REQUESTS.items()},
    **{s.value: t for s, t in QUERY_REQUESTS.items()},
    **{s.value: t for s, t in VERTICAL_REQUESTS.items()},
}
REPLIES: Mapping[str, type] = {
    **{s.value: t for s, t in HFL_REPLIES.items()},
    **{s.value: t for s, t in QUERY_REPLIES.items()},
    **{s.value: t for s, t in VERTICAL_REPLIES.items()},
}
#: The ``[job] type`` of the vertical jobs (:mod:`fedprop.protocols.vertical`).
VERTICAL_KINDS = frozenset(k.value for k in VerticalJobType)


def step_of(message_type: str) -> StrEnum:
    """The protocol step a Flower message type carries; ``ValueError`` if none."""
    for kind in (Step, QueryStep, VStep):
        try:
            return kind(message_type)
        except ValueError:
            continue
    raise ValueError(f"no fedprop step travels as '{message_type}'")


@dataclass(frozen=True)
class JobRef:
    """Which job (its ``[job] type``) or query a request's text is, without checking it."""

    kind: str
    id: str


@lru_cache(maxsize=64)
def job_of(text: str) -> JobRef | None:
    """The job or query ``text`` names (its ``[job]`` or ``[query]`` id), or ``None``."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return None
    for table, default in (("query", "query"), ("job", "")):
        section = doc.get(table)
        if isinstance(section, dict) and isinstance(section.get("id"), str):
            return JobRef(str(section.get("type", default)) or "job", section["id"])
    return None
