"""The reference model of tests/test_state_machine.py: what the sandbox must hold, computed
from the decided semantics (../DESIGN "Semantics" and the task brief), with no I/O.

Per activation *generation* (a file deleted and re-added is a new one) and sent group, the
model keeps what a correct engine has made the destination hold, per profile key
(:class:`Entry`: its record strings and the raw identifiers they came from). From that and
the current profiles, :meth:`Gen.target` computes what the destination should hold now,
and :meth:`Model.apply` moves the held entries to the target the way a correct apply does,
refusing exactly what the sandbox's ``reject_add_keys`` / ``reject_remove_keys`` refuse.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from destinations.identity import hashed_identifiers
from reconciler.plan import splits
from reconciler.workspace.activation_spec import SplitMode

IDENTIFIERS = ("email", "phone")
CONTROL_PERCENT = 50  # few profiles: both groups of a control split get members


@dataclass
class Person:
    """One row of the profiles table (the key is its position)."""

    seg: bool
    consent: bool
    blocked: bool  # in the suppression segment
    email: str | None
    phone: str | None

    def records(self, country: str) -> frozenset[str]:
        ids = {"email": self.email, "phone": self.phone}
        return frozenset(hashed_identifiers(ids, IDENTIFIERS, country))

    @property
    def excluded(self) -> bool:
        """Suppressed or without consent: removed under every action, even when frozen."""
        return self.blocked or not self.consent


@dataclass(frozen=True)
class Entry:
    records: frozenset[str]
    raw: tuple[str | None, str | None]  # (email, phone) as sent: the engine's fingerprint


@dataclass
class Config:
    """The activation file's fields that the machine changes."""

    split: SplitMode = SplitMode.NONE
    paused: bool = False
    frequency: str = "daily"
    on_delete: str = "keep"


@dataclass
class Gen:
    """One generation of one activation (``action`` maintain/append/remove)."""

    aid: str
    number: int
    action: str
    cfg: Config
    recorded: Config | None = None  # the spec when the state last said `ran`
    held: dict[str, dict[str, Entry]] = field(default_factory=dict)  # group -> key -> entry
    #: group -> key -> the entry a destination rejected (permanently): recorded as rejected,
    #: not sent again until the member changes (protocol v2 outcomes)
    rejected: dict[str, dict[str, Entry]] = field(default_factory=dict)
    foreign: dict[str, set[str]] = field(default_factory=dict)  # rows others put there
    ids: dict[str, str] = field(default_factory=dict)  # group -> sandbox audience id
    deleted: bool = False  # file removed, the delete not applied yet
    retired: bool = False  # delete applied: the state forgot it

    @property
    def label(self) -> str:
        return f"{self.aid}#{self.number}"

    def frozen(self, run: bool = False) -> bool:
        once_ran = self.cfg.frequency == "once" and self.recorded is not None and not run
        return self.cfg.paused or once_ran

    def group(self, key: str) -> str:
        pct = CONTROL_PERCENT if self.cfg.split is SplitMode.CONTROL else None
        return splits.group(self.cfg.split, pct, self.aid, key)

    def target(
        self,
        people: dict[str, Person],
        country: str,
        dups: set[str],
        run: bool = False,
        *,
        dups_excluded: set[str] = frozenset(),  # type: ignore[assignment]
    ) -> dict[str, dict[str, Entry]]:
        """What each sent group should hold now (maintain/append; see Model for remove).
        A held (duplicated) key keeps what it has, unless any of its rows is excluded."""
        out: dict[str, dict[str, Entry]] = {g: {} for g in self.held}
        out.update({g: {} for g in splits.groups(self.cfg.split) if splits.sent(g)})
        if self.deleted:
            return out if self.cfg.on_delete == "clear" else _copy(self.held)
        frozen = self.frozen(run)
        for key, p in people.items():
            current = {g: held[key] for g, held in self.held.items() if key in held}
            if key in dups:
                if key not in dups_excluded and not p.excluded:
                    for g, e in current.items():  # held as it is
                        out[g][key] = e
                continue
            if frozen and not p.excluded:
                for g, e in current.items():  # held as it is
                    out[g][key] = e
                continue
            if frozen or p.excluded:
                continue
            records = p.records(country)
            if p.seg and records:
                g = self.group(key)
                if splits.sent(g):
                    out[g][key] = Entry(records, (p.email, p.phone))
            elif self.action == "append" and not p.seg:
                for g, e in current.items():  # once added, stays (as it was sent)
                    out[g][key] = e
        return out

    def expected(self, grp: str, entries: dict[str, dict[str, Entry]] | None = None) -> set[str]:
        entries = self.held if entries is None else entries
        rows = {r for e in entries.get(grp, {}).values() for r in e.records}
        return rows | self.foreign.get(grp, set())

    def groups(self) -> set[str]:
        return set(self.held) | set(self.ids) | set(self.foreign)


@dataclass
class Removal:
    """The ``action: remove`` activation on its existing list."""

    gen: Gen
    rows: set[str]  # what the existing list holds

    def target(
        self, people: dict[str, Person], country: str, dups: set[str], run: bool = False
    ) -> set[str]:
        if self.gen.frozen(run):
            return set(self.rows)
        gone = {
            r for key, p in people.items() if key not in dups and p.seg for r in p.records(country)
        }
        return self.rows - gone


@dataclass
class Model:
    people: dict[str, Person]
    country: str
    gens: dict[str, Gen]  # the current generation of each activation id
    removal: Removal
    old: list[Gen] = field(default_factory=list)  # retired generations
    dups: set[str] = field(default_factory=set)
    #: keys (of ``dups``) one of whose rows is suppressed or without consent: a held key is
    #: still removed then
    dups_excluded: set[str] = field(default_factory=set)
    reject_add: set[str] = field(default_factory=set)
    reject_remove: set[str] = field(default_factory=set)

    def all_gens(self) -> list[Gen]:
        return [*self.old, *self.gens.values()]

    def ideal(self, gen: Gen) -> dict[str, set[str]]:
        """Group -> rows the destination should hold now."""
        if gen is self.removal.gen:
            return {splits.ALL: self.removal.target(self.people, self.country, self.dups)}
        if gen.retired:
            return {g: gen.expected(g) for g in gen.groups()}
        entries = gen.target(self.people, self.country, self.dups, dups_excluded=self.dups_excluded)
        for g, wanted in entries.items():  # a rejected entry: what the destination holds stays
            for key, entry in list(wanted.items()):
                if gen.rejected.get(g, {}).get(key) == entry:
                    if key in gen.held.get(g, {}):
                        wanted[key] = gen.held[g][key]
                    else:
                        del wanted[key]
        return {g: gen.expected(g, entries) for g in gen.groups() | set(entries)}

    # ------------------------------------------------------------------ apply
    def apply(self, only: str | None = None) -> None:
        """A correct `apply` (or `run ONLY`): every selected activation moves to its target;
        what the sandbox refuses stays as it was. Whether a run completed (``ran``, a
        delete forgotten) is then read from the state by the machine (:meth:`settle`)."""
        run = only is not None
        for aid, gen in self.gens.items():
            if only is not None and aid != only:
                continue
            if gen is self.removal.gen:
                self._apply_removal(gen, run)
                continue
            target = gen.target(
                self.people, self.country, self.dups, run, dups_excluded=self.dups_excluded
            )
            for g in set(gen.held) | set(target):
                held, want = gen.held.setdefault(g, {}), target.get(g, {})
                rejected = gen.rejected.setdefault(g, {})
                for key in list(rejected):  # left the audience: a re-entry is sent again
                    if key not in want:
                        del rejected[key]
                for key in set(held) | set(want):
                    others = {r for k, e in want.items() if k != key for r in e.records}
                    self._move(held, key, want.get(key), others, rejected)

    def settle(self, ran: dict[str, bool]) -> None:
        """After an apply: ``ran`` per activation id the state still has. A deleted
        generation the state forgot is retired (its audience stays as it is)."""
        for aid, gen in list(self.gens.items()):
            if gen.deleted and aid not in ran:
                gen.retired = True
                self.old.append(gen)
                del self.gens[aid]
            elif ran.get(aid):
                gen.recorded = Config(**vars(gen.cfg))

    def _move(
        self,
        held: dict[str, Entry],
        key: str,
        new: Entry | None,
        others: set[str],
        rejected: dict[str, Entry],
    ) -> None:
        """Move one key of one audience to ``new``, as the sandbox lets it. A row another
        member holds is never sent for removal (a shared inbox). A rejected entry is not
        sent again until the member changes."""
        old = held.get(key)
        if old == new:
            return
        if new is not None and rejected.get(key) == new:
            return  # rejected before, unchanged since: not sent again
        if new is None:
            if old.records - others and key in self.reject_remove:
                return  # refused: stays
            del held[key]
            return
        if key in self.reject_add:
            rejected[key] = new  # rejected: recorded as such, the old rows stay
            return
        if old is not None and old.records - new.records - others and key in self.reject_remove:
            # the new rows are sent; removing the stale ones is refused: both stay
            held[key] = Entry(old.records | new.records, new.raw)
            return
        held[key] = new

    def _apply_removal(self, gen: Gen, run: bool) -> None:
        if gen.frozen(run):
            return
        for key, p in self.people.items():
            if key in self.dups or not p.seg or key in self.reject_remove:
                continue
            self.removal.rows -= p.records(self.country)


def _copy(held: dict[str, dict[str, Entry]]) -> dict[str, dict[str, Entry]]:
    return {g: dict(entries) for g, entries in held.items()}
