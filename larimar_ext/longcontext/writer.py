"""The writer thread of ``LongContextMemory.ingest``: it adds finished batches of keys and
values to the host ``KeyValueMemory`` while the caller's thread encodes the next batch
(``KeyValueMemory.add`` releases the GIL, so encoding and writing overlap)."""

from __future__ import annotations

import queue
import threading
import time
from typing import TYPE_CHECKING, List, Optional

import numpy as np

if TYPE_CHECKING:  # memory.py imports this module
    from .memory import LongContextMemory


class _Writer:
    """A thread that writes finished batches into the KeyValueMemory while the caller
    encodes the next ones (KeyValueMemory.add releases the GIL)."""

    def __init__(self, owner: "LongContextMemory") -> None:
        self.owner = owner
        self.q: "queue.Queue[Optional[tuple]]" = queue.Queue(maxsize=4)
        self.error: Optional[BaseException] = None
        self.seconds = 0.0               # busy time: writes and their bookkeeping
        self.thread = threading.Thread(target=self._run, name="larimar-ext-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            item = self.q.get()
            if item is None:
                return
            if self.error is not None:
                continue                 # drain after a failure
            t0 = time.perf_counter()
            try:
                keys, values, texts = item
                rows = self.owner._store_for(keys.shape[1], values.shape[1]).add(keys, values)
                self.owner._record(rows, texts)
            except BaseException as exc:  # re-raised in the caller's thread by close()
                self.error = exc
            self.seconds += time.perf_counter() - t0

    def put(self, keys: np.ndarray, values: np.ndarray, texts: List[str]) -> None:
        if self.error is not None:
            raise self.error
        self.q.put((keys, values, texts))

    def close(self) -> None:
        self.q.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error
