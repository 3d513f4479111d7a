"""JSON rendering of a :class:`~reconciler.plan.model.Plan`: the documented ``--format json`` output.

The document is ``Plan.to_json()`` plus a top-level ``has_changes`` flag, so scripts need not
re-derive it, and (when known) ``destination_calls``: the requests each destination needs. Its shape is described in ``docs/plan-json.md``; ``format_version`` changes on any
incompatible change.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from reconciler.plan.model import Plan
from reconciler.render.estimates import DestinationCalls

__all__ = ["plan_document", "render_json"]


def plan_document(plan: Plan, calls: Sequence[DestinationCalls] | None = None) -> dict[str, Any]:
    """The JSON document as a dict: ``format_version``, ``has_changes``, then the plan's fields,
    then ``destination_calls`` when ``calls`` is given."""
    data = plan.to_json()
    doc = {"format_version": data.pop("format_version"), "has_changes": plan.has_changes, **data}
    if calls is not None:
        doc["destination_calls"] = [c.to_json() for c in calls]
    return doc


def render_json(plan: Plan, *, calls: Sequence[DestinationCalls] | None = None) -> str:
    """The plan as indented JSON (field order kept), ending in a newline."""
    return json.dumps(plan_document(plan, calls), indent=2, sort_keys=False) + "\n"
