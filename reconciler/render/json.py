"""JSON rendering of a :class:`~reconciler.plan.model.Plan`: the documented ``--format json`` output.

The document is ``Plan.to_json()`` plus a top-level ``has_changes`` flag, so scripts need not
re-derive it. Its shape is described in ``docs/plan-json.md``; ``format_version`` changes on any
incompatible change.
"""

from __future__ import annotations

import json
from typing import Any

from reconciler.plan.model import Plan

__all__ = ["plan_document", "render_json"]


def plan_document(plan: Plan) -> dict[str, Any]:
    """The JSON document as a dict: ``format_version``, ``has_changes``, then the plan's fields."""
    data = plan.to_json()
    return {"format_version": data.pop("format_version"), "has_changes": plan.has_changes, **data}


def render_json(plan: Plan) -> str:
    """The plan as indented JSON (field order kept), ending in a newline."""
    return json.dumps(plan_document(plan), indent=2, sort_keys=False) + "\n"
