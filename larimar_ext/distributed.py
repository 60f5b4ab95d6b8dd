"""A key-value memory sharded over the ranks of a torch.distributed (gloo) group.

``ShardedKeyValueMemory`` behaves like one ``KeyValueMemory`` holding every row, while each
rank stores only its shard. See docs/DISTRIBUTED.md for the design; in short:

* Every operation is **collective**: all ranks of the group call it, in the same order (the
  usual SPMD style of ``torchrun`` scripts). Each rank passes its *own* rows or queries, or
  ``None`` to take part without any (so one rank can feed or query the whole memory while
  the others pass ``None``, or run ``serve()``, which does that for them).
* ``add``: the rows of all ranks form one batch, rank 0's rows first, then rank 1's, and so
  on. A row lives on the shard ``hash(key bytes) % world_size``, so a bitwise-identical key
  always meets its first copy: the single store's rule (an identical key is not appended
  again; its slot holds the mean of every value written to it) holds globally. Global ids
  are the ids one ``KeyValueMemory`` would give when fed the same batches in the same order.
* ``search`` / ``read``: every shard searches its rows for the queries of every rank, the
  per-shard top k (score, global id) go back to the rank that asked, which keeps the best k
  by (score descending, global id ascending): the exact global top k, as the single store
  orders it. A shard appends rows in increasing global id, so its own ties (broken by the
  lower local id) are already in global-id order.
* Every collective runs on a gloo group with a bounded timeout: a rank that dies, hangs or
  calls another operation makes the others raise ``ShardedMemoryError`` within the timeout,
  and the memory refuses any later call (its shards may disagree).

A shard is a ``KeyValueMemory`` (the kernel holds its keys and values and merges duplicate
keys) plus the map from its local slots to global ids. Candidates' values come from the
kernel with the search (``search_and_reconstruct``), and the Gaussian weights of the merged
top k are the kernel's too (``ops.gaussian_read_scored``, the routine the store's ``read``
uses), so no memory math is done here.

This module is the memory and its collectives; what the ranks send each other (headers,
status codes, byte blocks) is ``_shard_protocol.py``, and which rank owns a key is
``_shard_routing.py``.
"""

from __future__ import annotations

import datetime as _dt
import os
import time
from typing import Any, Optional

import numpy as np
import torch
import torch.distributed as dist

from . import _shard_protocol as wire
from ._arrays import Boundary, gaussian_alpha, integer, scalar
from ._profiling import profiled
from ._shard_routing import route as _route  # also importable here by that name (tests)
from .kv_memory import KeyValueMemory
from .ops import gaussian_read_scored
from .results import SearchResult

__all__ = ["ShardedKeyValueMemory", "ShardedMemoryError", "init_from_env", "DEFAULT_TIMEOUT"]

#: Default bound, in seconds, on any one collective (and on the rendezvous of ``init_from_env``).
DEFAULT_TIMEOUT = 60.0

_METRICS = ("ip", "cosine", "l2")


class ShardedMemoryError(RuntimeError):
    """A collective failed or timed out (a peer died, hung or called another operation), or
    the memory is unusable after such a failure."""


def _seconds(timeout: Any) -> float:
    if isinstance(timeout, _dt.timedelta):
        t = timeout.total_seconds()
    else:
        t = scalar(timeout, "timeout")
    if not (np.isfinite(t) and t > 0):
        raise ValueError(f"timeout: expected a finite number of seconds > 0, got {timeout!r}")
    return t


def init_from_env(timeout: Any = DEFAULT_TIMEOUT, backend: str = "gloo") -> tuple[int, int]:
    """Initialise the default process group from the environment (``env://``: MASTER_ADDR,
    MASTER_PORT, RANK, WORLD_SIZE, as ``torchrun`` sets them) unless it already is, with a
    bounded rendezvous: if not every rank has joined within ``timeout`` seconds, this raises
    ``ShardedMemoryError`` instead of waiting forever. Returns (rank, world_size)."""
    seconds = _seconds(timeout)
    if not dist.is_available():
        raise ShardedMemoryError("torch.distributed is not available in this torch build")
    if not dist.is_initialized():
        missing = [v for v in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE")
                   if v not in os.environ]
        if missing:
            raise ShardedMemoryError(
                f"cannot join the process group: environment variables {missing} are not set "
                f"(launch with torchrun, or set MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE)")
        start = time.monotonic()
        try:
            dist.init_process_group(backend=backend, init_method="env://",
                                    timeout=_dt.timedelta(seconds=seconds))
        except Exception as exc:
            raise ShardedMemoryError(
                f"rank {os.environ['RANK']}: the rendezvous at {os.environ['MASTER_ADDR']}:"
                f"{os.environ['MASTER_PORT']} for WORLD_SIZE={os.environ['WORLD_SIZE']} failed "
                f"after {time.monotonic() - start:.1f} s (timeout {seconds:g} s): some rank did "
                f"not join in time or cannot be reached. Cause: {exc}") from exc
    return dist.get_rank(), dist.get_world_size()


class ShardedKeyValueMemory:
    """A ``KeyValueMemory`` sharded over the ranks of a gloo process group.

    Args:
        key_dim, value_dim, metric, dtype: as for ``KeyValueMemory`` (the same on all ranks;
            the constructor checks).
        group: a process group whose backend can move CPU tensors (gloo). ``None`` (default):
            the default group is initialised from the environment if it is not yet
            (``init_from_env(timeout)``), and the memory makes its own gloo group over all
            its ranks with ``timeout``, so its traffic and its timeout are its own (the
            default group may be NCCL). A given group keeps its own timeout.
        timeout: seconds (or a ``timedelta``) that any rank waits in one collective for the
            others before raising ``ShardedMemoryError``; also the rendezvous bound.

    The constructor and every method but ``__len__``, ``nbytes``, ``local_*`` and
    ``close`` are collective: every rank of the group calls them, in the same order.
    """

    def __init__(self, key_dim: int, value_dim: int, metric: str = "cosine", group: Any = None,
                 timeout: Any = DEFAULT_TIMEOUT, dtype: Any = np.float32) -> None:
        self._broken: Optional[str] = None
        self.timeout = _seconds(timeout)
        # Validate locally first, so that a bad argument fails before any communication.
        self._shard = KeyValueMemory(key_dim, value_dim, metric, dtype)
        self.key_dim, self.value_dim = self._shard.key_dim, self._shard.value_dim
        self.metric, self.dtype = self._shard.metric, self._shard.dtype
        self._owns_group = group is None
        if group is None:
            init_from_env(self.timeout)
            try:
                group = dist.new_group(backend="gloo",
                                       timeout=_dt.timedelta(seconds=self.timeout))
            except Exception as exc:
                raise ShardedMemoryError(
                    f"rank {dist.get_rank()}: creating the memory's gloo group failed within "
                    f"{self.timeout:g} s (a rank did not construct the memory?). Cause: {exc}"
                ) from exc
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        self._size = 0  # global number of slots, the same on every rank
        # Local slot -> global id (increasing); the first len(self._shard) entries are in use,
        # the rest is capacity, grown by doubling so that many small adds stay linear.
        self._gids = np.empty(0, np.int64)
        # Every rank must agree on the configuration.
        mine = torch.tensor([self.key_dim, self.value_dim, _METRICS.index(self.metric),
                             self.dtype.itemsize], dtype=torch.int64)
        got = [torch.empty_like(mine) for _ in range(self.world_size)]
        self._comm("constructor", "config check", lambda: dist.all_gather(got, mine, group=group))
        conf = torch.stack(got).numpy()
        if (conf != conf[0]).any():
            raise ValueError(
                "ranks constructed the memory differently (rows: key_dim, value_dim, metric "
                f"{_METRICS}, dtype itemsize): {conf.tolist()}")

    # ------------------------------------------------------------------ local, no collective
    def __len__(self) -> int:
        """Number of slots in the whole memory (the same on every rank; no communication)."""
        return self._size

    @property
    def local_size(self) -> int:
        return len(self._shard)

    @property
    def local_ids(self) -> np.ndarray:
        """Global ids (local_size,) of this rank's slots, increasing (a copy)."""
        return self._gids[:len(self._shard)].copy()

    @property
    def local_keys(self) -> np.ndarray:
        """Keys (local_size, key_dim) of this rank's slots, in local_ids order."""
        return self._shard.keys

    @property
    def local_values(self) -> np.ndarray:
        """Values (local_size, value_dim) of this rank's slots, in local_ids order."""
        return self._shard.values

    @property
    def nbytes(self) -> int:
        """Host bytes of what this rank's shard stores (its KeyValueMemory's and a global id
        per row)."""
        return self._shard.nbytes + len(self._shard) * self._gids.itemsize

    @property
    def reserved_nbytes(self) -> int:
        """Host bytes this rank's shard holds, allocated capacity included."""
        return self._shard.reserved_nbytes + self._gids.nbytes

    def _reserve_ids(self, extra: int) -> None:
        """Room in the global-id map for ``extra`` more slots (amortised doubling)."""
        need = len(self._shard) + extra
        if need > len(self._gids):
            grown = np.empty(max(need, 2 * len(self._gids), 1024), np.int64)
            grown[:len(self._shard)] = self._gids[:len(self._shard)]
            self._gids = grown

    def close(self) -> None:
        """Drop this rank's shard and the memory's own group (local; call it on every rank)."""
        if self._owns_group and self.group is not None and self._broken is None:
            try:
                dist.destroy_process_group(self.group)
            except Exception:
                pass
        self.group = None
        self._broken = self._broken or "closed"
        self._shard = KeyValueMemory(1, 1)
        self._gids = np.empty(0, np.int64)

    def __repr__(self) -> str:
        return (f"ShardedKeyValueMemory(key_dim={self.key_dim}, value_dim={self.value_dim}, "
                f"metric={self.metric!r}, size={len(self)}, rank={self.rank}/"
                f"{self.world_size}, local_size={self.local_size}, dtype={self.dtype.name})")

    # ------------------------------------------------------------------ plumbing
    def _check_usable(self) -> None:
        if self._broken is not None:
            raise ShardedMemoryError(f"rank {self.rank}: this memory is unusable: {self._broken}")

    def _comm(self, op: str, step: str, fn: Any) -> Any:
        start = time.monotonic()
        try:
            return fn()
        except Exception as exc:
            took = time.monotonic() - start
            self._broken = (f"{op} failed in its '{step}' collective after {took:.1f} s "
                            f"(timeout {self.timeout:g} s)")
            raise ShardedMemoryError(
                f"rank {self.rank}: {self._broken}: a peer rank died, hung, or called another "
                f"operation; the shards may now disagree, so this memory refuses further calls. "
                f"Cause: {type(exc).__name__}: {exc}") from exc

    def _header(self, op: int, status: int, n: int = 0, k: int = 0, flags: int = 0,
                counts: Optional[np.ndarray] = None) -> np.ndarray:
        """All-gather of every rank's (op, status, n, k, flags, local size, per-owner counts)."""
        row = wire.header_row(op, status, n, k, flags, len(self._shard), self.world_size, counts)
        mine = torch.from_numpy(row)
        got = [torch.empty_like(mine) for _ in range(self.world_size)]
        self._comm(wire.OP_NAMES[op], "header",
                   lambda: dist.all_gather(got, mine, group=self.group))
        return torch.stack(got).numpy()

    def _agree(self, hdr: np.ndarray, error: Optional[Exception]) -> int:
        """The operation all ranks called; raises on disagreement or on a rank's bad input
        (everywhere, before anything changed)."""
        ops = hdr[:, wire.H_OP]
        real = sorted(set(int(o) for o in ops if o != wire.FOLLOW))
        if len(real) > 1:
            calls = ", ".join(f"rank {r}: {wire.OP_NAMES.get(int(o), o)}"
                              for r, o in enumerate(ops))
            raise ShardedMemoryError(
                f"rank {self.rank}: ranks called different operations ({calls}); nothing was "
                f"changed. Collective calls must be made by every rank in the same order.")
        if not real:
            raise ShardedMemoryError(
                f"rank {self.rank}: every rank is in serve(); some rank must issue operations")
        if error is not None:
            raise error
        bad = np.nonzero(hdr[:, wire.H_STATUS] != wire.OK)[0]
        if len(bad):
            kind = TypeError if (hdr[bad, wire.H_STATUS] == wire.BAD_TYPE).all() else ValueError
            raise kind(f"rank(s) {bad.tolist()} passed invalid arguments to "
                       f"{wire.OP_NAMES[real[0]]} (their own error says which); nothing was "
                       f"changed")
        return real[0]

    def _alltoall(self, op: str, step: str, send: np.ndarray, send_counts: np.ndarray,
                  recv_counts: np.ndarray) -> np.ndarray:
        """Variable-size all-to-all along the first axis: send_counts[j] rows of ``send`` (in
        rank order) go to rank j; returns the recv_counts[j] rows from each rank j, in rank
        order (one world: ``send`` itself)."""
        if self.world_size == 1:
            return send
        out = np.empty((int(recv_counts.sum()),) + send.shape[1:], send.dtype)
        t_out, t_in = torch.from_numpy(out), torch.from_numpy(np.ascontiguousarray(send))
        self._comm(op, step, lambda: dist.all_to_all_single(
            t_out, t_in, [int(c) for c in recv_counts], [int(c) for c in send_counts],
            group=self.group))
        return out

    def _allreduce(self, op: str, step: str, a: np.ndarray) -> np.ndarray:
        if self.world_size == 1:
            return a
        t = torch.from_numpy(a)
        self._comm(op, step, lambda: dist.all_reduce(t, group=self.group))
        return a

    def _floats(self, b: Boundary, x: Any, name: str, width: int) -> np.ndarray:
        """(n, width) rows of the memory's dtype, checked as the core checks them; None or
        0 rows -> an empty array."""
        if x is None:
            return np.empty((0, width), self.dtype)
        a = b.floats(x, name)
        if a.shape[0] and a.shape[1] != width:
            raise ValueError(f"{name}: expected shape (n, {width}), got {a.shape}")
        if a.shape[0] == 0:
            return np.empty((0, width), self.dtype)
        if not np.isfinite(a).all():
            raise ValueError(f"{name}: contains NaN or Inf")
        return a

    # ------------------------------------------------------------------ add
    @profiled
    def add(self, keys: Any = None, values: Any = None) -> Any:
        """Collective: append this rank's rows (keys (n, key_dim), values (n, value_dim), or
        None / 0 rows for none); returns the global ids of this rank's rows (n,).

        The rows of all ranks form one batch in rank order (rank 0's first); its ids are those
        one ``KeyValueMemory`` gives to that batch: new keys take the next ids in batch order,
        a key bitwise identical to a stored one (or to an earlier row of the batch) takes that
        id and its slot becomes the mean of all its values."""
        self._check_usable()
        b = Boundary(self.dtype, "the memory's dtype")
        error, status = None, wire.OK
        k = np.empty((0, self.key_dim), self.dtype)
        v = np.empty((0, self.value_dim), self.dtype)
        try:
            k = self._floats(b, keys, "keys", self.key_dim)
            v = self._floats(b, values, "values", self.value_dim)
            if len(k) != len(v):
                raise ValueError(f"keys and values: expected the same number of rows, got "
                                 f"{len(k)} and {len(v)}")
            owner = _route(k, self.world_size)
        except (TypeError, ValueError) as exc:
            error, status = exc, wire.arg_status(exc)
            k, v = k[:0], v[:0]
            owner = np.zeros(0, np.int64)
        counts = np.bincount(owner, minlength=self.world_size)
        hdr = self._header(wire.ADD, status, len(k), 0, 0, counts)
        self._agree(hdr, error)
        return b.wrap(self._add_rest(hdr, k, v, owner))

    def _add_rest(self, hdr: np.ndarray, k: np.ndarray, v: np.ndarray,
                  owner: np.ndarray) -> np.ndarray:
        W, me = self.world_size, self.rank
        n_all = hdr[:, wire.H_N]
        N = int(n_all.sum())
        if N == 0:
            return np.empty(0, np.int64)
        offset = int(n_all[:me].sum())
        count_matrix = hdr[:, wire.HEADER:]  # [source, owner]
        send_counts, recv_counts = count_matrix[me], count_matrix[:, me]
        # Rows to their owners: keys, values, and their positions in the batch. What arrives
        # is in source-rank order, i.e. in increasing batch position.
        order = np.argsort(owner, kind="stable")
        if W > 1 and (np.diff(owner) < 0).any():
            k, v = k[order], v[order]
        r_keys = self._alltoall("add", "keys", k, send_counts, recv_counts)
        r_values = self._alltoall("add", "values", v, send_counts, recv_counts)
        r_pos = self._alltoall("add", "positions", offset + order, send_counts, recv_counts)
        del k, v
        M = len(r_keys)
        base, old_len = self._size, len(self._shard)
        failure = None
        # N flags (a row that is the first of a new key), then one failure count.
        flags = np.zeros(N + 1, np.int32)
        try:
            if M:
                # The id map first: a MemoryError there is reported like one in the store,
                # before the store has changed.
                self._reserve_ids(M)
                # The kernel appends new keys and merges a repeated key into its slot
                # (running mean), in batch order as one KeyValueMemory would.
                local = np.asarray(self._shard.add(r_keys, r_values), np.int64)
                fresh = local - old_len
                is_new = fresh >= 0
                _, first = np.unique(np.where(is_new, fresh, -1), return_index=True)
                first = first[is_new[first]]  # rows that open a new slot, in slot order
                flags[r_pos[first]] = 1
        except Exception as exc:  # e.g. MemoryError: tell the others instead of leaving them
            failure = exc
            flags[N] = 1
        flags = self._allreduce("add", "new-key flags", flags)
        if flags[N]:
            self._broken = "a rank failed while storing its rows during add"
            if failure is not None:
                raise ShardedMemoryError(f"rank {me}: {self._broken}: {failure}") from failure
            raise ShardedMemoryError(f"rank {me}: {self._broken}; see that rank's error")
        # Global id of the row at batch position p when it opens a new slot.
        new_rank = np.cumsum(flags[:N], dtype=np.int64) - 1
        total_new = int(new_rank[-1] + 1)
        gid_rows = np.empty(M, np.int64)
        if M:
            first_gid = base + new_rank[r_pos[first]]
            gid_rows[is_new] = first_gid[fresh[is_new]]
            if (~is_new).any():
                gid_rows[~is_new] = self._gids[local[~is_new]]
            # Commit: the new slots' global ids (the store already holds their rows).
            self._gids[old_len:old_len + len(first)] = first_gid
        self._size = base + total_new
        # Ids back to the rows' sources (reverse all-to-all).
        back = self._alltoall("add", "ids", gid_rows, recv_counts, send_counts)
        ids = np.empty(len(owner), np.int64)
        ids[order] = back
        return ids

    # ------------------------------------------------------------------ search / read
    @profiled
    def search(self, Q: Any = None, k: int = 1) -> Any:
        """Collective: exact top ``k`` of this rank's queries Q (nq, key_dim) over the whole
        memory, as ``SearchResult(global ids int64 (nq, k), scores (nq, k))``, best first,
        ties by lower id:
        what one ``KeyValueMemory`` holding every row returns. Q None: serve the other ranks'
        queries only (returns (0, k) arrays)."""
        ids, scores, _ = self._query(Q, k, None, want_values=False)
        return SearchResult(ids, scores)

    @profiled
    def read(self, Q: Any = None, k: int = 1, alpha: Optional[float] = None) -> Any:
        """Collective: readouts (nq, value_dim) as ``KeyValueMemory.read``: the value of the
        global best key (k = 1, bitwise what the single store returns), or with ``alpha`` the
        Gaussian-weighted values of the global top k."""
        _, _, out = self._query(Q, k, alpha, want_values=True)
        return out

    def _query(self, Q: Any, k: Any, alpha: Any, want_values: bool) -> tuple:
        self._check_usable()
        b = Boundary(self.dtype, "the memory's dtype")
        error, status, kk, a, flags = None, wire.OK, 0, 0.0, 0
        q = np.empty((0, self.key_dim), self.dtype)
        try:
            q = self._floats(b, Q, "Q", self.key_dim)
            kk = integer(k, "k")
            if len(q):
                if not (1 <= kk <= self._size):
                    raise ValueError(f"k: expected 1 <= k <= number of stored keys "
                                     f"({self._size}), got {kk}")
            if want_values:
                flags |= wire.WANT_VALUES
                checked = gaussian_alpha(alpha, kk if len(q) else 1)  # the kernel's checks
                if checked is not None:
                    a = checked
                    if self.metric == "ip":
                        flags |= wire.WANT_KEY_SQ
        except (TypeError, ValueError) as exc:
            error, status = exc, wire.arg_status(exc)
            q = q[:0]
        if not len(q):
            kk = max(kk, 0) if error is None else 0
        hdr = self._header(wire.QUERY, status, len(q), kk, flags)
        self._agree(hdr, error)
        ids, scores, cand_values, cand_key_sq = self._query_rest(hdr, q)
        out = None
        if want_values:
            out = self._readout(q, scores, cand_values, cand_key_sq, alpha is not None, a)
        return b.wrap(ids), b.wrap(scores), (b.wrap(out) if out is not None else None)

    def _query_rest(self, hdr: np.ndarray, q: np.ndarray) -> tuple:
        W, me, T = self.world_size, self.rank, self.dtype
        isz = T.itemsize
        nqs, ks, flags = hdr[:, wire.H_N], hdr[:, wire.H_K], hdr[:, wire.H_FLAGS]
        my_k = int(ks[me])
        if int(nqs.sum()) == 0:
            return (np.empty((0, my_k), np.int64), np.empty((0, my_k), T), None, None)
        d, v = self.key_dim, self.value_dim
        # 1. Every rank's queries to every rank.
        allq = self._alltoall("search/read", "queries", np.tile(q, (W, 1)),
                              np.full(W, len(q), np.int64), nqs).reshape(-1)
        # 2. Each shard's top k for each source's queries (searched per source, so that a
        #    source's batch takes the code path the single store would take for it).
        parts, sizes = [], np.zeros(W, np.int64)
        at = 0
        for s in range(W):
            nq_s, k_s = int(nqs[s]), int(ks[s])
            qs = allq[at:at + nq_s * d].reshape(nq_s, d)
            at += nq_s * d
            if nq_s == 0:
                continue
            sizes[s] = wire.block_bytes(nq_s, k_s, int(flags[s]), v, isz)
            try:
                blob = self._candidates(qs, k_s, int(flags[s]))
                status = wire.pack_status(0)
            except Exception as exc:  # e.g. scores overflow on this shard: tell the asker
                status = wire.pack_status(wire.search_error_code(exc))
                blob = [np.zeros(sizes[s] - len(status), np.uint8)]
            parts.extend([status] + blob)
        send = np.concatenate(parts) if parts else np.empty(0, np.uint8)
        nq, k = int(nqs[me]), my_k
        block = wire.block_bytes(nq, k, int(flags[me]), v, isz)
        got = self._alltoall("search/read", "candidates", send, sizes,
                             np.full(W, block if nq else 0, np.int64))
        if nq == 0:
            return (np.empty((0, k), np.int64), np.empty((0, k), T), None, None)
        failed = wire.block_failures(got, W, block)
        if failed:
            kind = wire.search_error_type(min(failed.values()))
            raise kind(f"Q: the search failed on the shard(s) of rank(s) {sorted(failed)} "
                       f"({kind.__name__}; for a ValueError: scores overflow the range of the "
                       f"dtype, values too large to compare); nothing was changed")
        # 3. Merge: (score desc, global id asc), as the single store orders.
        c_scores, c_gids, c_vals, c_ksq = wire.unpack_candidates(got, W, nq, k, v, T,
                                                                  int(flags[me]))
        best = np.lexsort((c_gids, -c_scores), axis=-1)[:, :k]
        rows = np.arange(nq)[:, None]
        ids, scores = c_gids[rows, best], c_scores[rows, best]
        vals = c_vals[rows, best] if c_vals is not None else None
        ksq = c_ksq[rows, best] if c_ksq is not None else None
        return ids, scores, vals, ksq

    def _candidates(self, qs: np.ndarray, k: int, flags: int) -> list:
        """This shard's top k for queries qs (nq, key_dim), as the byte blocks sent back to
        their rank: scores (nq, k), global ids (nq, k), [values (nq, k, value_dim)], [key
        squared norms (nq, k)]; padded with (-inf, max id, 0, 0) past the shard's size
        (the layout is ``_shard_protocol``'s)."""
        T, v, nq = self.dtype, self.value_dim, len(qs)
        kl = min(k, len(self._shard))
        scores = np.full((nq, k), -np.inf, T)
        gids = np.full((nq, k), wire.PAD_ID, np.int64)
        vals = np.zeros((nq, k, v), T) if flags & wire.WANT_VALUES else None
        ksq = np.zeros((nq, k), T) if flags & wire.WANT_KEY_SQ else None
        if kl:
            if vals is not None:  # the hits' values from the kernel, with the search
                local, ls, lv = self._shard.search_and_reconstruct(qs, kl)
                vals[:, :kl] = lv
            else:
                local, ls = self._shard.search(qs, kl)
            scores[:, :kl] = ls
            gids[:, :kl] = self._gids[local]
            if ksq is not None:  # for the asker's 'ip' distances |q|^2 + |key|^2 - 2 q.key
                ksq[:, :kl] = self._shard.key_sq_norms(local.reshape(-1)).reshape(nq, kl)
        return wire.pack_candidates(scores, gids, vals, ksq)

    def _readout(self, q: np.ndarray, scores: np.ndarray, vals: Optional[np.ndarray],
                 key_sq: Optional[np.ndarray], soft: bool, alpha: float) -> np.ndarray:
        """Readouts (nq, value_dim) from the merged top k: scores (nq, k), values
        (nq, k, value_dim), key squared norms (nq, k) for 'ip'; the best value, or soft."""
        if len(q) == 0 or vals is None:
            return np.empty((0, self.value_dim), self.dtype)
        if not soft:
            return np.ascontiguousarray(vals[:, 0])
        # The kernel's soft read over these candidates: the weights and the weighted sum of
        # KeyValueMemory.read, so the sharded readout is the single store's formula.
        ip = self.metric == "ip"
        return gaussian_read_scored(scores, vals, self.metric, alpha, q if ip else None,
                                    key_sq if ip else None)

    # ------------------------------------------------------------------ gather, serve
    def gather(self) -> tuple:
        """Collective: (keys (n, key_dim), values (n, value_dim)) of the whole memory in
        global id order, on every rank (what ``KeyValueMemory.keys``/``.values`` return;
        every rank then holds a full copy, so keep it for small memories and tests)."""
        self._check_usable()
        hdr = self._header(wire.GATHER, wire.OK)
        self._agree(hdr, None)
        return self._gather_rest(hdr)

    def _gather_rest(self, hdr: np.ndarray) -> tuple:
        W, T = self.world_size, self.dtype
        rec = wire.row_record(T, self.key_dim, self.value_dim)
        mine = np.empty(len(self._shard), rec)
        if len(mine):
            mine["gid"], mine["key"] = self.local_ids, self.local_keys
            mine["value"] = self.local_values
        raw = mine.view(np.uint8).reshape(len(mine), rec.itemsize)
        got = self._alltoall("gather", "rows", np.tile(raw, (W, 1)), np.full(W, len(mine)),
                             hdr[:, wire.H_SIZE]).reshape(-1).view(rec)
        got = got[np.argsort(got["gid"])]
        return np.ascontiguousarray(got["key"]), np.ascontiguousarray(got["value"])

    def ping(self) -> None:
        """Collective no-op: keeps ranks waiting in ``serve()`` within their timeout."""
        self._check_usable()
        self._agree(self._header(wire.PING, wire.OK), None)

    def serve(self) -> int:
        """Take part, with no rows or queries of this rank, in the operations the other ranks
        issue (add, search, read, gather, ping) until one of them calls ``stop_serving()``.
        Returns how many operations were served. Each wait for the next operation is bounded
        by the timeout: a driver must issue something (``ping()`` will do) more often."""
        served = 0
        while True:
            self._check_usable()
            hdr = self._header(wire.FOLLOW, wire.OK)
            try:
                op = self._agree(hdr, None)
            except (TypeError, ValueError):
                continue  # the issuing rank passed bad arguments: nothing happened
            if op == wire.STOP:
                return served
            if op == wire.ADD:
                self._add_rest(hdr, np.empty((0, self.key_dim), self.dtype),
                               np.empty((0, self.value_dim), self.dtype), np.zeros(0, np.int64))
            elif op == wire.QUERY:
                self._query_rest(hdr, np.empty((0, self.key_dim), self.dtype))
            elif op == wire.GATHER:
                self._gather_rest(hdr)
            served += 1

    def stop_serving(self) -> None:
        """Collective with the ranks in ``serve()``: makes their ``serve()`` return."""
        self._check_usable()
        self._agree(self._header(wire.STOP, wire.OK), None)
