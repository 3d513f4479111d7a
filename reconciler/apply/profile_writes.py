"""What an activation's apply records besides its members, once its audiences ran: the
per-attribute hashes of ``goal: sync_attributes`` (state) and the "Included in Audience"
write-back of ``append_to_profiles`` (source). Both are set operations in SQL over the
members just recorded, idempotent, so a run that died before them converges on the next."""

from __future__ import annotations

import duckdb

from reconciler.enginedb import Session
from reconciler.errors import SourceError
from reconciler.plan import attributes, membership
from reconciler.plan.model import ActivationPlan
from reconciler.sources import writeback
from reconciler.state.schema import CATALOG
from reconciler.workspace.activation_spec import Goal, ResolvedActivation
from reconciler.workspace.loader import Workspace


def record_attribute_hashes(
    session: Session, ws: Workspace, activation_id: str, act: ResolvedActivation, fp: str
) -> None:
    """Keep the per-attribute hashes of a ``sync_attributes`` activation's members whose
    fingerprint ``fp`` (SQL over the profiles row ``p``) matches what was recorded."""
    if act.goal is not Goal.SYNC_ATTRIBUTES:
        return
    integ = ws.integrations[act.destination]
    profiles = ws.config.source.profiles
    mapping = {f: integ.attributes[f] for f in act.attributes}
    session.state_store().record_attributes(
        activation_id,
        profiles=f"{session.source.catalog}.{membership._ident(profiles.table)}",
        key=membership._ident(profiles.key),
        fingerprint=fp,
        attribute_fps=attributes.fingerprints_sql(profiles, mapping),
    )


def write_back(
    session: Session, ws: Workspace, ap: ActivationPlan, act: ResolvedActivation | None
) -> None:
    """Make the source's write-back rows of this activation match its recorded members
    (none when ``append_to_profiles`` is off or the activation was deleted with
    ``on_delete: clear``). Only for a ``writable: true`` source."""
    if not getattr(ws.config.source, "writable", False):
        return
    enabled = act is not None and act.append_to_profiles
    if act is None and ap.on_delete != "clear":
        return  # deleted, audience kept at the destination: its profiles are still in it
    try:
        writeback.sync(
            session.con,
            source_catalog=session.source.catalog,
            state_catalog=CATALOG,
            activation_id=ap.id,
            names={au.group: au.name for au in ap.audiences},
            enabled=enabled,
            former_id=ap.moved_from,
        )
    except duckdb.Error as exc:
        detail = " ".join(str(exc).split())
        raise SourceError(
            f"writing {writeback.WRITEBACK_TABLE} into the source failed: {detail}; the next "
            "apply writes it again"
        ) from exc
