"""How many destination requests a plan needs, and about how long they take, per destination.

Computed from each adapter's declared :class:`~destinations.base.Limits`: members travel in
calls of at most ``members_per_call``; an update is one call per batch where the destination
updates in place and two (remove old, add new) where it does not; creating or renaming an
audience is one call. The duration is ``requests / requests_per_minute`` when the destination
declares a rate; without one it is not estimated (a local destination answers at once, an
HTTP one as fast as its latency allows, ``concurrency`` requests at a time).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from reconciler.plan.model import Plan

__all__ = ["CallLimits", "DestinationCalls", "destination_calls", "duration", "summary_line"]


@dataclass(frozen=True)
class CallLimits:
    """What the estimate needs of one integration's adapter."""

    type: str
    members_per_call: int
    requests_per_minute: float | None = None
    concurrency: int = 1
    updates_in_place: bool = False


@dataclass(frozen=True)
class DestinationCalls:
    """The requests one integration needs for a plan (the ``destination_calls[]`` of JSON)."""

    integration: str
    type: str
    requests: int
    members: int
    members_per_call: int
    requests_per_minute: float | None
    concurrency: int
    estimated_seconds: float | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def destination_calls(plan: Plan, limits: Mapping[str, CallLimits]) -> list[DestinationCalls]:
    """Per integration with member changes or audience calls (sorted by name); integrations
    missing from ``limits`` (no longer in the workspace) are left out."""
    requests: dict[str, int] = {}
    members: dict[str, int] = {}
    for a in plan.activations:
        lim = limits.get(a.destination)
        if lim is None:
            continue
        per = max(lim.members_per_call, 1)
        if a.export is not None and a.has_changes:  # one delta file, and maybe a full file
            requests[a.destination] = requests.get(a.destination, 0) + 1 + int(a.export.full)
            members[a.destination] = members.get(a.destination, 0) + a.export.delta_rows
            continue
        for au in a.audiences:
            if not au.sent:
                continue
            n = int(au.create) + int(bool(au.rename_from))
            n += math.ceil(au.add / per) + math.ceil(au.remove / per)
            n += math.ceil(au.update / per) * (1 if lim.updates_in_place else 2)
            if n:
                requests[a.destination] = requests.get(a.destination, 0) + n
                members[a.destination] = (
                    members.get(a.destination, 0) + au.add + au.remove + au.update
                )
    out = []
    for name in sorted(requests):
        lim = limits[name]
        seconds = (
            round(requests[name] * 60.0 / lim.requests_per_minute, 1)
            if lim.requests_per_minute
            else None
        )
        out.append(
            DestinationCalls(
                integration=name,
                type=lim.type,
                requests=requests[name],
                members=members[name],
                members_per_call=lim.members_per_call,
                requests_per_minute=lim.requests_per_minute,
                concurrency=lim.concurrency,
                estimated_seconds=seconds,
            )
        )
    return out


def duration(seconds: float | None) -> str:
    """``about 3 min``, ``about 40 s``, ``under a second``."""
    if seconds is None:
        return "no declared rate limit"
    if seconds < 1:
        return "under a second"
    if seconds < 90:
        return f"about {seconds:.0f} s"
    if seconds < 5400:
        return f"about {seconds / 60:.0f} min"
    return f"about {seconds / 3600:.1f} h"


def summary_line(c: DestinationCalls) -> str:
    """``meta-prod (meta_custom_audiences): 12 requests of up to 10,000 members, about 2 s
    at 300 requests/minute``."""
    noun = "request" if c.requests == 1 else "requests"
    text = (
        f"{c.integration} ({c.type}): {c.requests:,} {noun} of up to {c.members_per_call:,} members"
    )
    if c.requests_per_minute:
        rate = f"{c.requests_per_minute:g} requests/minute"
        return f"{text}, {duration(c.estimated_seconds)} at {rate}"
    return f"{text} ({duration(None)})"
