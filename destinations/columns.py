"""Columns of a :class:`~destinations.base.MemberBatch` as the engine hands them over:
lazily converted Arrow columns and the records' flat-plus-counts shape."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import Any, overload

__all__ = ["LazyColumn", "RecordColumn"]


class LazyColumn(Sequence[Any]):
    """A column the engine read in bulk (an Arrow array: anything with ``to_pylist``),
    converted to Python values only when an adapter first reads it. An adapter that hands
    :attr:`MemberBatch.table` to a database never pays for the conversion."""

    __slots__ = ("_source", "_values")

    def __init__(self, source: Any):
        self._source = source
        self._values: list[Any] | None = None

    def _list(self) -> list[Any]:
        if self._values is None:
            try:
                self._values = self._source.to_pylist()
            except (ValueError, OverflowError):  # a value Python's types cannot hold
                self._values = [_scalar(v) for v in self._source]
            kind = getattr(self._source, "type", None)
            if kind is not None and _has_map(kind):  # Arrow gives a map as (key, value) pairs
                self._values = [_dicts(v, kind) for v in self._values]
        return self._values

    def __len__(self) -> int:
        return len(self._source)

    @overload
    def __getitem__(self, i: int) -> Any: ...
    @overload
    def __getitem__(self, i: slice) -> list[Any]: ...
    def __getitem__(self, i: int | slice) -> Any:
        return self._list()[i]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._list())

    def __eq__(self, other: object) -> bool:
        return list(self) == (list(other) if isinstance(other, Sequence) else other)

    __hash__ = None  # type: ignore[assignment]


class RecordColumn(Sequence[tuple[str, ...]]):
    """The members' record strings as one flat column plus each member's count — the shape
    the engine reads them in, and the cheapest to hand to a database (``flat``, ``owners``:
    the member index of each string). Indexing and iterating give each member's tuple, so it
    is a ``Sequence[Sequence[str]]`` like any other ``MemberBatch.records``."""

    __slots__ = ("_counts", "_offsets", "flat")

    def __init__(self, flat: Sequence[str], counts: Sequence[int]):
        self.flat = flat
        self._counts = counts
        self._offsets: list[int] | None = None

    def __len__(self) -> int:
        return len(self._counts)

    def _starts(self) -> list[int]:
        if self._offsets is None:
            self._offsets = list(itertools.accumulate(self._counts, initial=0))
        return self._offsets

    @overload
    def __getitem__(self, i: int) -> tuple[str, ...]: ...
    @overload
    def __getitem__(self, i: slice) -> list[tuple[str, ...]]: ...
    def __getitem__(self, i: int | slice) -> tuple[str, ...] | list[tuple[str, ...]]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        starts = self._starts()
        if i < 0:
            i += len(self)
        return tuple(self.flat[starts[i] : starts[i + 1]])

    def __iter__(self) -> Iterator[tuple[str, ...]]:
        flat, at = self.flat, 0
        for n in self._counts:
            yield tuple(flat[at : at + n])
            at += n

    def owners(self) -> list[int]:
        """The member index of each string of ``flat``."""
        return [i for i, n in enumerate(self._counts) for _ in range(n)]


def _scalar(value: Any) -> Any:
    """One Arrow value as Python, when the whole column would not convert: a nanosecond
    timestamp as its text (no precision lost), a date or time beyond Python's range (an
    infinite timestamp) as None, like a non-finite number; inside a list, a map or a struct,
    each element on its own (one such element spoils neither the others nor the run)."""
    try:
        return value.as_py()
    except (OverflowError, ValueError) as exc:
        import pyarrow as pa

        if not value.is_valid:
            return None
        if isinstance(value, pa.MapScalar):
            return [(_scalar(k), _scalar(v)) for k, v in zip(*_entries(value), strict=True)]
        if isinstance(value, pa.ListScalar | pa.LargeListScalar | pa.FixedSizeListScalar):
            return [_scalar(v) for v in value.values]
        if isinstance(value, pa.StructScalar):
            return {k: _scalar(v) for k, v in value.items()}
        if isinstance(exc, OverflowError):
            return None
        try:
            return value.cast(pa.string()).as_py()
        except (pa.ArrowNotImplementedError, pa.ArrowInvalid):
            return str(value)


def _has_map(kind: Any) -> bool:
    """Whether the Arrow type ``kind`` is or holds a map (in a list or a struct)."""
    import pyarrow.types as pat

    if pat.is_map(kind):
        return True
    if pat.is_list(kind) or pat.is_large_list(kind) or pat.is_fixed_size_list(kind):
        return _has_map(kind.value_type)
    if pat.is_struct(kind):
        return any(_has_map(kind.field(i).type) for i in range(kind.num_fields))
    return False


def _dicts(value: Any, kind: Any) -> Any:
    """``value`` (Python, of Arrow type ``kind``) with each map's pairs as a dict."""
    import pyarrow.types as pat

    if value is None:
        return None
    if pat.is_map(kind):
        pairs = [(k, _dicts(v, kind.item_type)) for k, v in value]
        try:
            return dict(pairs)
        except TypeError:  # a key Python cannot hash (a list): the pairs as they are
            return pairs
    if pat.is_list(kind) or pat.is_large_list(kind) or pat.is_fixed_size_list(kind):
        return [_dicts(v, kind.value_type) for v in value]
    if pat.is_struct(kind) and isinstance(value, dict):
        types = {kind.field(i).name: kind.field(i).type for i in range(kind.num_fields)}
        return {k: _dicts(v, types[k]) if k in types else v for k, v in value.items()}
    return value


def _entries(value: Any) -> tuple[Any, Any]:
    """A map scalar's keys and values (two Arrow arrays)."""
    entries = value.values
    return entries.field(0), entries.field(1)
