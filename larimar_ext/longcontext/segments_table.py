"""The distinct segments of a long-context memory: for each, how often it occurs, where it
first occurs, the segments around it there, and the memory row that holds it.

One dict (text -> segment id) and flat arrays by id, not a dict and an object per segment
and per fact: at 1M distinct tokens of documentation (97,507 rows) the per-segment
dictionaries and tuples were about 680 bytes a row, most of the Python side of the memory.
"""
from __future__ import annotations

from array import array
from typing import Dict, Iterator, List, NamedTuple, Optional, Sequence

import numpy as np


class Place(NamedTuple):
    """Where a distinct segment first occurs: its ordinal in the stream, the segment before
    it, how many of its own tokens repeat that one, and whether it continues its sentence."""
    position: int = 0
    prev: Optional[str] = None
    overlap: int = 0
    continues: bool = False


NOWHERE = Place()


class SegmentTable:
    """Distinct segment texts in order of first occurrence (ids 0, 1, ...), each with its
    count, first place, the distinct segment that first follows it (``next_of``) and its
    row, once the writer has stored it (``store``). A row holds one segment in recall mode,
    every segment of one key in paper mode."""

    def __init__(self) -> None:
        self._ids: Dict[str, int] = {}
        self._texts: List[str] = []
        self._counts = array("q")
        self._positions = array("q")
        self._prev = array("q")        # id of the segment before the first occurrence, or -1
        self._next = array("q")        # id of the first distinct segment after it, or -1
        self._overlap = array("l")
        self._continues = array("b")
        self._row = array("q")         # -1 until stored
        self._row_first = array("q")   # row -> its first segment's id
        self._row_more: Dict[int, List[int]] = {}   # row -> the ids after its first
        self._last = -1                # the segment seen last, across calls

    def __len__(self) -> int:
        return len(self._texts)

    @property
    def rows(self) -> int:
        """Rows that hold segments (0 .. rows - 1)."""
        return len(self._row_first)

    def see(self, text: str, position: int, overlap: int, continues: bool) -> bool:
        """One occurrence of a segment at stream ordinal ``position``, after the one seen
        last; True when the text is new (a first place is kept only for new texts)."""
        sid = self._ids.get(text)
        new = sid is None
        if new:
            sid = len(self._texts)
            self._ids[text] = sid
            self._texts.append(text)
            self._counts.append(1)
            self._positions.append(position)
            self._prev.append(self._last)
            self._next.append(-1)
            self._overlap.append(overlap)
            self._continues.append(bool(continues))
            self._row.append(-1)
        else:
            self._counts[sid] += 1
        last = self._last
        if last >= 0 and self._next[last] < 0 and last != sid:
            self._next[last] = sid
        self._last = sid
        return new

    def store(self, row: int, text: str) -> None:
        """The writer stored a seen segment in ``row`` (rows come in order, each new row
        one past the last)."""
        sid = self._ids[text]
        self._row[sid] = row
        if row == len(self._row_first):
            self._row_first.append(sid)
        elif row < len(self._row_first):
            self._row_more.setdefault(row, []).append(sid)
        else:
            raise ValueError(f"row: expected at most {len(self._row_first)}, got {row}")

    def count(self, text: str) -> int:
        sid = self._ids.get(text)
        return 0 if sid is None else self._counts[sid]

    def row_of(self, text: Optional[str]) -> Optional[int]:
        """The row holding a segment, None when it is not stored (or ``text`` is None)."""
        sid = self._ids.get(text) if text is not None else None
        if sid is None or self._row[sid] < 0:
            return None
        return self._row[sid]

    def place(self, text: Optional[str]) -> Place:
        """Where a segment first occurred (NOWHERE for an unknown one)."""
        sid = self._ids.get(text) if text is not None else None
        if sid is None:
            return NOWHERE
        prev = self._prev[sid]
        return Place(self._positions[sid], self._texts[prev] if prev >= 0 else None,
                     self._overlap[sid], bool(self._continues[sid]))

    def next_of(self, text: str) -> Optional[str]:
        """The first distinct segment that followed ``text``'s first occurrence."""
        sid = self._ids.get(text)
        nxt = self._next[sid] if sid is not None else -1
        return self._texts[nxt] if nxt >= 0 else None

    def _row_ids(self, row: int) -> List[int]:
        return [self._row_first[row], *self._row_more.get(row, ())]

    def row_texts(self, row: int) -> List[str]:
        """The distinct segments stored in ``row``, in the order stored."""
        return [self._texts[i] for i in self._row_ids(row)]

    def rows_shared(self) -> int:
        """Rows that hold more than one distinct segment."""
        return len(self._row_more)

    def stored(self) -> Iterator[str]:
        """The stored segments, row by row."""
        for row in range(len(self._row_first)):
            yield from self.row_texts(row)

    def texts(self, start: int = 0) -> List[str]:
        """The distinct segments seen, in order of first occurrence, from the start-th on
        (``len`` before an ingest, to list what it added)."""
        return self._texts[start:]

    def saved(self) -> Dict[str, np.ndarray]:
        """The stored segments, row by row, as ``LongContextMemory.save`` writes them: their
        texts (UTF-8 bytes and offsets), rows, counts and first places, with the segments
        before and after given as indices into this order (-1: none)."""
        ids = [i for row in range(self.rows) for i in self._row_ids(row)]
        index = np.full(len(self._texts) + 1, -1, np.int64)   # id -> saved index; -1 -> -1
        index[ids] = np.arange(len(ids))
        encoded = [self._texts[i].encode("utf-8") for i in ids]
        offsets = np.zeros(len(ids) + 1, np.int64)
        np.cumsum([len(b) for b in encoded], out=offsets[1:])
        taken = np.asarray(ids, np.int64)

        def column(a: array) -> np.ndarray:
            return np.asarray(a, np.int64)[taken] if ids else np.zeros(0, np.int64)

        return {"text_bytes": np.frombuffer(b"".join(encoded), np.uint8).copy(),
                "text_offsets": offsets, "text_rows": column(self._row),
                "text_counts": column(self._counts), "text_positions": column(self._positions),
                "text_prev": index[column(self._prev)], "text_next": index[column(self._next)],
                "text_overlap": column(self._overlap), "text_continues": column(self._continues)}

    @classmethod
    def from_saved(cls, texts: Sequence[str], rows: Sequence[int], counts: Sequence[int],
                   positions: Sequence[int], prev: Sequence[int], nxt: Sequence[int],
                   overlap: Sequence[int], continues: Sequence[int]) -> "SegmentTable":
        """The table ``saved`` wrote (its columns checked by the caller: rows in order,
        prev and next indices in [-1, len))."""
        table = cls()
        table._texts = list(texts)
        table._ids = {t: i for i, t in enumerate(table._texts)}
        for name, col in (("_counts", counts), ("_positions", positions), ("_prev", prev),
                          ("_next", nxt), ("_overlap", overlap), ("_continues", continues)):
            getattr(table, name).extend(int(x) for x in col)
        table._row.extend([-1] * len(table._texts))   # until store() places each
        for row, text in zip(rows, table._texts):
            table.store(int(row), text)
        return table
