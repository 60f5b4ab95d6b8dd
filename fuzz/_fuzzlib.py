"""Shared pieces of the larimar_ext fuzz harnesses (fuzz_api.py, fuzz_load.py).

* ``Reader``: a deterministic byte decoder. The harnesses decode their inputs with it (not
  with atheris' FuzzedDataProvider), so a saved input replays bit for bit with or without
  atheris installed, and any version of it.
* ``Finding``: raised by a harness for anything that is not an accepted outcome. Under
  atheris an uncaught exception (or a crash, an abort, a timeout) stops the run and
  libFuzzer writes the input to ``-artifact_prefix``.
* ``main``: the command line shared by the harnesses:

      python fuzz/fuzz_X.py [libFuzzer flags] [corpus dirs]   # atheris (coverage-guided)
      python fuzz/fuzz_X.py --random [-max_total_time=S] [-seed=N] [-artifact_prefix=P]
                            [corpus dirs]                         # fallback without atheris
      python fuzz/fuzz_X.py --replay FILE...                    # rerun saved inputs

  ``--random`` is a plain mutation loop (random bytes and byte-level mutations of the
  corpus), used only when atheris cannot be imported; it writes a finding's input to
  ``<artifact_prefix>crash-<sha1>`` like libFuzzer and prints libFuzzer's
  "Done N runs in S second(s)" line so callers parse one format.
  ``LARIMAR_FUZZ_STATS=path`` makes both modes dump outcome counters (JSON) there about
  once a second.
"""

from __future__ import annotations

import faulthandler
import hashlib
import json
import os
import random
import re
import struct
import sys
import time
import traceback
import zlib
from collections import Counter
from typing import Callable, List, Sequence

import numpy as np


class Finding(AssertionError):
    """An outcome the API does not allow (wrong exception type, state changed, ...)."""


class Reader:
    """Reads bounded values from a byte string; past the end every read returns 0 bits."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def remaining(self) -> int:
        return max(0, len(self.data) - self.pos)

    def bytes(self, n: int) -> bytes:
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out + b"\0" * (n - len(out))

    def u8(self) -> int:
        return self.bytes(1)[0]

    def u32(self) -> int:
        return struct.unpack("<I", self.bytes(4))[0]

    def int(self, lo: int, hi: int) -> int:
        """Uniform-ish integer in [lo, hi] (one byte when the range fits)."""
        span = hi - lo + 1
        if span <= 1:
            return lo
        raw = self.u8() if span <= 256 else self.u32()
        return lo + raw % span

    def chance(self, num: int, den: int = 256) -> bool:
        """True with probability num/den (one byte)."""
        return self.u8() * den < num * 256

    def choice(self, seq: Sequence):
        return seq[self.int(0, len(seq) - 1)]

    def f64(self) -> float:
        return struct.unpack("<d", self.bytes(8))[0]


# Synthetic coverage for code atheris cannot see (the C++ kernel): ``feedback(key)`` calls
# one of 512 distinct tiny functions chosen by a CRC of ``key`` (an op, its outcome and
# the first words of its error message). Once instrumented (instrument_modules), each is a
# separate coverage edge, so libFuzzer keeps inputs that reach a new kernel error path or
# a new kind of result. Without atheris these are plain no-op calls.
_FEEDBACK = []
for _i in range(512):
    exec(f"def _feedback_{_i}():\n    return {_i}\n")  # noqa: S102 - fixed source
    _FEEDBACK.append(globals()[f"_feedback_{_i}"])


def feedback(key: str) -> None:
    _FEEDBACK[zlib.crc32(key.encode("utf-8", "replace")) % len(_FEEDBACK)]()


def same_state(a: dict, b: dict) -> bool:
    """Two state snapshots (name -> array or scalar) are identical: arrays by shape, dtype
    and values (NaN equal to NaN), scalars by value (a NaN float equal to a NaN float)."""
    if a.keys() != b.keys():
        return False
    for k in a:
        x, y = a[k], b[k]
        if isinstance(x, np.ndarray):
            if x.shape != y.shape or x.dtype != y.dtype or not np.array_equal(x, y, equal_nan=True):
                return False
        elif x != y and not (isinstance(x, float) and x != x and y != y):
            return False
    return True


_STRICT = os.environ.get("LARIMAR_FUZZ_STRICT") == "1"


def known_finding(exc: BaseException, findings: Sequence) -> bool:
    """Whether ``exc`` is one of a harness's KNOWN_FINDINGS ((id, exception type, message
    regex) each: an instance of the type whose message matches): counted as "known:<id>" in
    the stats, it does not stop the run. Always False under LARIMAR_FUZZ_STRICT=1, which
    turns the known findings back into findings."""
    if _STRICT:
        return False
    for fid, typ, pattern in findings:
        if isinstance(exc, typ) and re.search(pattern, str(exc)):
            STATS.note(f"known:{fid}")
            return True
    return False


class Stats:
    """Outcome counters of one process, dumped as JSON to $LARIMAR_FUZZ_STATS."""

    def __init__(self) -> None:
        self.counts: Counter = Counter()
        self.notes: Counter = Counter()
        self.started = time.time()
        self.execs = 0
        self._last_dump = 0.0
        self.path = os.environ.get("LARIMAR_FUZZ_STATS")

    def outcome(self, op: str, what: str) -> None:
        self.counts[f"{op}:{what}"] += 1

    def note(self, text: str) -> None:
        self.notes[text] += 1

    def tick(self, force: bool = False) -> None:
        self.execs += 1
        now = time.time()
        if self.path and (force or now - self._last_dump > 1.0):
            self._last_dump = now
            blob = {"execs": self.execs, "seconds": round(now - self.started, 2),
                    "outcomes": dict(sorted(self.counts.items())),
                    "notes": dict(self.notes.most_common(50))}
            tmp = self.path + ".tmp"
            with open(tmp, "w") as f:
                json.dump(blob, f, indent=1)
            os.replace(tmp, self.path)


STATS = Stats()


# ------------------------------------------------------------------------------ drivers
def _flag(argv: List[str], name: str, default):
    for a in argv:
        if a.startswith(f"-{name}="):
            return type(default)(a.split("=", 1)[1])
    return default


def _corpus(dirs: List[str]) -> List[bytes]:
    out = []
    for d in dirs:
        if os.path.isdir(d):
            for name in sorted(os.listdir(d)):
                p = os.path.join(d, name)
                if os.path.isfile(p):
                    with open(p, "rb") as f:
                        out.append(f.read())
        elif os.path.isfile(d):
            with open(d, "rb") as f:
                out.append(f.read())
    return out


def _mutate(rng: random.Random, data: bytes, max_len: int) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        op = rng.randrange(6)
        if op == 0 and b:  # flip a bit
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1 and b:  # random byte
            b[rng.randrange(len(b))] = rng.randrange(256)
        elif op == 2:  # insert bytes
            i = rng.randrange(len(b) + 1)
            b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif op == 3 and b:  # erase a run
            i = rng.randrange(len(b))
            del b[i:i + rng.randint(1, 16)]
        elif op == 4 and b:  # interesting integer
            i = rng.randrange(len(b))
            v = rng.choice([0, 0xFF, 0x7F, 0x80, 1, 0xFFFFFFFF, 0x7FFFFFFF, 2**63, 2**64 - 1])
            b[i:i + 8] = (v & (2**64 - 1)).to_bytes(8, "little")
        elif op == 5 and b:  # truncate
            del b[rng.randrange(len(b)):]
    return bytes(b[:max_len])


def _save_artifact(prefix: str, data: bytes) -> str:
    path = f"{prefix}crash-{hashlib.sha1(data).hexdigest()}"
    d = os.path.dirname(path)
    if d:
        os.makedirs(d, exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return path


def _random_mode(argv: List[str], target: Callable[[bytes], None]) -> int:
    max_time = _flag(argv, "max_total_time", 30)
    runs = _flag(argv, "runs", -1)
    seed = _flag(argv, "seed", 0) or int(time.time())
    prefix = _flag(argv, "artifact_prefix", "./")
    max_len = _flag(argv, "max_len", 4096)
    timeout = _flag(argv, "timeout", 20)
    dirs = [a for a in argv if not a.startswith("-")]
    rng = random.Random(seed)
    corpus = _corpus(dirs) or [b""]
    print(f"INFO: --random mode (no atheris), seed {seed}, {len(corpus)} corpus inputs",
          flush=True)
    # A hard crash kills the process before it can save the input: keep it on disk first.
    current = _flag(argv, "current_input", f"{prefix}last-input")
    start = time.time()
    n = 0
    while (runs < 0 or n < runs) and time.time() - start < max_time:
        if n < len(corpus):
            data = corpus[n]
        elif rng.random() < 0.25:
            data = bytes(rng.randrange(256) for _ in range(rng.randint(0, 512)))
        else:
            data = _mutate(rng, rng.choice(corpus), max_len)
        if current:
            with open(current, "wb") as f:
                f.write(data)
        # A hang (even inside native code, GIL released or not) dumps every thread's
        # Python stack and exits with status 1; the input is kept in -current_input.
        faulthandler.dump_traceback_later(timeout, exit=True)
        try:
            target(data)
        except BaseException:  # noqa: BLE001 - everything that escapes is a finding
            traceback.print_exc()
            print(f"==ERROR: finding; input written to {_save_artifact(prefix, data)}",
                  flush=True)
            return 1
        finally:
            faulthandler.cancel_dump_traceback_later()
        n += 1
        if n > len(corpus) and rng.random() < 0.02:
            corpus.append(data)
    STATS.tick(force=True)
    print(f"Done {n} runs in {int(time.time() - start)} second(s)", flush=True)
    return 0


def _replay(files: List[str], target: Callable[[bytes], None]) -> int:
    bad = 0
    for path in files:
        with open(path, "rb") as f:
            data = f.read()
        try:
            target(data)
            print(f"OK {path}")
        except BaseException:  # noqa: BLE001
            traceback.print_exc()
            print(f"FINDING {path}")
            bad += 1
    return 1 if bad else 0


def instrument_modules(prefixes: Sequence[str]) -> int:
    """Atheris-instruments, in place, every Python function and method defined in the
    already imported modules whose names start with one of ``prefixes``. (The editable
    install loads larimar_ext through a custom loader, which atheris.instrument_imports
    leaves uninstrumented.) Returns the number of functions instrumented."""
    import inspect
    import types

    import atheris

    done = set()

    def visit(obj, modname):
        if isinstance(obj, (staticmethod, classmethod)):
            obj = obj.__func__
        if isinstance(obj, property):
            for f in (obj.fget, obj.fset, obj.fdel):
                if f is not None:
                    visit(f, modname)
            return
        if (isinstance(obj, types.FunctionType) and obj.__module__ == modname
                and id(obj) not in done):
            done.add(id(obj))
            atheris.instrument_func(obj)
        elif inspect.isclass(obj) and obj.__module__ == modname and id(obj) not in done:
            done.add(id(obj))
            for v in vars(obj).values():
                visit(v, modname)

    for name, mod in list(sys.modules.items()):
        if mod is None or not any(name == p or name.startswith(p + ".") for p in prefixes):
            continue
        for v in list(vars(mod).values()):
            visit(v, name)
    return len([d for d in done])


def main(target: Callable[[bytes], None], setup_atheris: Callable[[], None] = lambda: None) -> None:
    argv = sys.argv[1:]
    if argv and argv[0] == "--replay":
        sys.exit(_replay(argv[1:], target))
    if argv and argv[0] == "--random":
        sys.exit(_random_mode(argv[1:], target))
    import atheris  # a missing atheris is an error here; use --random instead

    setup_atheris()
    atheris.Setup([sys.argv[0]] + argv, target)
    atheris.Fuzz()
