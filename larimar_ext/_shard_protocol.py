"""Wire protocol of ``ShardedKeyValueMemory`` (``larimar_ext.distributed``): what the ranks
of one operation send each other, and how it is laid out in bytes.

- Header: at the start of every operation each rank all-gathers one int64 row,
  (op, status, n, k, flags, local size) followed by ``world_size`` per-owner row counts
  (``add``: how many of this rank's rows go to each owner). The memory stacks the rows of
  all ranks into a (world_size, HEADER + world_size) array; the ``H_*`` constants name
  its columns.
- Codes: the operation (``ADD`` ... ``FOLLOW``, a rank in ``serve()``), the status of a
  rank's own arguments (``OK``, ``BAD_VALUE``, ``BAD_TYPE``), the query flags
  (``WANT_VALUES``, ``WANT_KEY_SQ``) and the code of a shard's failed search.
- Candidates: a shard's answer to the queries (nq of them, top k) of one source rank is
  one byte block: an int64 status (0, or the failure code), then scores (nq, k), global
  ids int64 (nq, k), [values (nq, k, value_dim)] with ``WANT_VALUES``, [key squared norms
  (nq, k)] with ``WANT_KEY_SQ``; rows past the shard's size are padded with
  (-inf, ``PAD_ID``, 0, 0).
- Gathered rows: one record (global id, key, value) per slot (``row_record``).

numpy only: the collectives themselves (gloo, timeouts) are the memory's.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

# Operation codes of the header every rank sends at the start of an operation.
ADD, QUERY, GATHER, PING, STOP, FOLLOW = 1, 2, 3, 4, 5, 6
OP_NAMES = {ADD: "add", QUERY: "search/read", GATHER: "gather", PING: "ping",
            STOP: "stop_serving", FOLLOW: "serve"}
# Status of a rank's own arguments.
OK, BAD_VALUE, BAD_TYPE = 0, 1, 2
# Query flags.
WANT_VALUES, WANT_KEY_SQ = 1, 2
SEARCH_ERRORS = {ValueError: 1, MemoryError: 2}  # a shard's failure, sent to the asker
_OTHER_ERROR = 3                                 # any other exception of a shard's search
HEADER = 6  # op, status, n, k, flags, local size; then world_size per-owner row counts
H_OP, H_STATUS, H_N, H_K, H_FLAGS, H_SIZE = range(HEADER)  # columns of the gathered header
PAD_ID = np.iinfo(np.int64).max  # global id of a padding candidate (sorts after every real id)
_STATUS_BYTES = 8                # the int64 status that opens a candidate block


def header_row(op: int, status: int, n: int, k: int, flags: int, local_size: int,
               world: int, counts: Optional[np.ndarray] = None) -> np.ndarray:
    """One rank's header: int64 (HEADER + world,) = (op, status, n, k, flags, local size,
    per-owner counts (world,) or zeros)."""
    row = np.zeros(HEADER + world, np.int64)
    row[:HEADER] = (op, status, n, k, flags, local_size)
    if counts is not None:
        row[HEADER:] = counts
    return row


def arg_status(exc: Exception) -> int:
    """The header status of a rank whose own arguments raised ``exc``."""
    return BAD_TYPE if isinstance(exc, TypeError) else BAD_VALUE


def as_bytes(a: np.ndarray) -> np.ndarray:
    """``a``'s elements as a flat uint8 array (C order), to be concatenated into a block."""
    return np.ascontiguousarray(a).reshape(-1).view(np.uint8)


def record_bytes(flags: int, value_dim: int, itemsize: int) -> int:
    """Bytes per (query, candidate) of a candidate block: score, global id, [value],
    [key squared norm]."""
    return (itemsize + 8 + (value_dim * itemsize if flags & WANT_VALUES else 0)
            + (itemsize if flags & WANT_KEY_SQ else 0))


def block_bytes(nq: int, k: int, flags: int, value_dim: int, itemsize: int) -> int:
    """Bytes of one candidate block for nq queries: the status, then nq * k records."""
    return _STATUS_BYTES + nq * k * record_bytes(flags, value_dim, itemsize)


def pack_candidates(scores: np.ndarray, gids: np.ndarray, vals: Optional[np.ndarray],
                    key_sq: Optional[np.ndarray]) -> list[np.ndarray]:
    """The body of a candidate block (after its status), as byte arrays: scores (nq, k),
    global ids (nq, k), [values (nq, k, value_dim)], [key squared norms (nq, k)]."""
    blob = [as_bytes(scores), as_bytes(gids)]
    if vals is not None:
        blob.append(as_bytes(vals))
    if key_sq is not None:
        blob.append(as_bytes(key_sq))
    return blob


def pack_status(code: int) -> np.ndarray:
    """The status that opens a candidate block: 0, or a failure code (``search_error_code``)."""
    return np.array([code], np.int64).view(np.uint8)


def search_error_code(exc: BaseException) -> int:
    """The failure code a shard sends for the exception its search raised."""
    return SEARCH_ERRORS.get(type(exc), _OTHER_ERROR)


def search_error_type(code: int) -> type:
    """The exception the asker raises for a shard's failure code."""
    return {1: ValueError, 2: MemoryError}.get(code, RuntimeError)


def block_failures(got: np.ndarray, world: int, block: int) -> dict[int, int]:
    """{rank: failure code} of the candidate blocks (``block`` bytes each, one per rank, in
    rank order) in ``got`` whose status is not 0."""
    codes = {r: int(got[r * block:r * block + _STATUS_BYTES].view(np.int64)[0])
             for r in range(world)}
    return {r: code for r, code in codes.items() if code}


def unpack_candidates(got: np.ndarray, world: int, nq: int, k: int, value_dim: int,
                      dtype: np.dtype, flags: int) -> tuple:
    """The candidates of ``world`` blocks (one per shard, in rank order) side by side:
    scores (nq, world * k), global ids (nq, world * k), values (nq, world * k, value_dim)
    or None, key squared norms (nq, world * k) or None; shard s in columns s*k .. s*k + k."""
    T, v, isz = dtype, value_dim, dtype.itemsize
    c_scores = np.empty((nq, world * k), T)
    c_gids = np.empty((nq, world * k), np.int64)
    c_vals = np.empty((nq, world * k, v), T) if flags & WANT_VALUES else None
    c_ksq = np.empty((nq, world * k), T) if flags & WANT_KEY_SQ else None
    at = 0
    for s in range(world):
        cols = slice(s * k, (s + 1) * k)
        m = nq * k
        at += _STATUS_BYTES
        c_scores[:, cols] = got[at:at + m * isz].view(T).reshape(nq, k)
        at += m * isz
        c_gids[:, cols] = got[at:at + m * 8].view(np.int64).reshape(nq, k)
        at += m * 8
        if c_vals is not None:
            c_vals[:, cols] = got[at:at + m * v * isz].view(T).reshape(nq, k, v)
            at += m * v * isz
        if c_ksq is not None:
            c_ksq[:, cols] = got[at:at + m * isz].view(T).reshape(nq, k)
            at += m * isz
    return c_scores, c_gids, c_vals, c_ksq


def row_record(dtype: np.dtype, key_dim: int, value_dim: int) -> np.dtype:
    """The record of one gathered slot: global id, key (key_dim,), value (value_dim,)."""
    return np.dtype([("gid", np.int64), ("key", dtype, (key_dim,)),
                     ("value", dtype, (value_dim,))])
