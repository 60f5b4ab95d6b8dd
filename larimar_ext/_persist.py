"""Safetensors persistence shared by the memory classes.

A file holds named arrays plus a JSON header (``__metadata__``) with the format name, the
format version, the object's config and a SHA-256 of every array. Saves are atomic (write a
temporary file beside the target, fsync, rename); loads check everything before they hand
anything back (``RowFile`` streams rows into a fresh object and checks the digests after
the last block). No pickle anywhere.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import tempfile
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, Mapping, NamedTuple, Tuple

import numpy as np
from safetensors.numpy import load as parse_safetensors, save_file

FORMAT_VERSION = 1


# The header's own checksum (format, version and config), stored beside the arrays' ones.
_CONFIG_DIGEST = "__header__"


def _digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def _header_digest(kind: str, config_json: str) -> str:
    text = f"{kind}\n{FORMAT_VERSION}\n{config_json}"
    return hashlib.sha256(text.encode()).hexdigest()


def _metadata(kind: str, config: Mapping[str, Any], digests: Dict[str, str]) -> Dict[str, str]:
    config_json = json.dumps(dict(config), sort_keys=True)
    digests = dict(digests, **{_CONFIG_DIGEST: _header_digest(kind, config_json)})
    return {"format": kind, "version": str(FORMAT_VERSION), "config": config_json,
            "sha256": json.dumps(digests, sort_keys=True)}


@contextmanager
def _atomic(path: str) -> Iterator[str]:
    """A temporary file beside ``path`` for the block to write; when the block ends without
    error it is fsynced and renamed over ``path`` (and the folder fsynced), else removed."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".larimar-", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save(path: str | os.PathLike, kind: str, config: Mapping[str, Any],
         arrays: Mapping[str, np.ndarray]) -> None:
    arrays = {name: np.ascontiguousarray(a) for name, a in arrays.items()}
    metadata = _metadata(kind, config, {name: _digest(a) for name, a in arrays.items()})
    with _atomic(os.fspath(path)) as tmp:
        save_file(arrays, tmp, metadata=metadata)


# safetensors dtype names of the arrays the memories save
_DTYPES = {"F32": np.float32, "F64": np.float64, "I64": np.int64, "I32": np.int32,
           "U8": np.uint8, "I8": np.int8}


def save_streamed(path: str | os.PathLike, kind: str, config: Mapping[str, Any],
                  specs: Mapping[str, Tuple[Any, Tuple[int, ...]]],
                  blocks: Callable[[], Iterator[Dict[str, np.ndarray]]]) -> None:
    """``save`` for arrays too large to hold: ``specs`` name -> (dtype, shape), every array
    with the same number of rows, and ``blocks()`` a fresh iterator over consecutive rows of
    all of them at once (called twice: once for the digests the header holds, once to write).
    Writes ``save``'s format, atomically as ``save`` does."""
    names = sorted(specs)
    specs = {n: (np.dtype(specs[n][0]), tuple(specs[n][1])) for n in names}
    hashers = {n: hashlib.sha256() for n in names}
    for block in blocks():
        for n in names:
            hashers[n].update(np.ascontiguousarray(block[n], specs[n][0]).tobytes())
    header: Dict[str, Any] = {"__metadata__": _metadata(
        kind, config, {n: h.hexdigest() for n, h in hashers.items()})}
    codes = {np.dtype(t): code for code, t in _DTYPES.items()}
    at, starts = 0, {}
    for n in names:
        dtype, shape = specs[n]
        size = math.prod(shape) * dtype.itemsize
        header[n] = {"dtype": codes[dtype], "shape": list(shape), "data_offsets": [at, at + size]}
        starts[n], at = at, at + size
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as safetensors does
    base = 8 + len(text)
    with _atomic(os.fspath(path)) as tmp, open(tmp, "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text)
        row = dict.fromkeys(names, 0)
        again = {n: hashlib.sha256() for n in names}
        for block in blocks():
            for n in names:
                a = np.ascontiguousarray(block[n], specs[n][0])
                f.seek(base + starts[n] + row[n] * a.dtype.itemsize * math.prod(specs[n][1][1:]))
                data = a.tobytes()
                f.write(data)
                again[n].update(data)
                row[n] += len(a)
        for n in names:  # the file is dropped (not renamed) when either check fails
            if row[n] != specs[n][1][0]:
                raise ValueError(f"blocks: gave {row[n]} rows of {n!r}, expected {specs[n][1][0]}")
            if again[n].hexdigest() != hashers[n].hexdigest():
                raise ValueError(f"blocks: the second pass over {n!r} differed from the first")
        f.truncate(base + at)


def _header(read: Callable[[int], bytes], size: int) -> Tuple[Dict[str, Any], int]:
    """The JSON header of a safetensors file of ``size`` bytes and its length, ``read(n)``
    reading on from the file's start; ValueError when either is damaged."""
    header_len = int.from_bytes(read(8), "little")
    if size < 8 or header_len > size - 8:
        raise ValueError("header length beyond the end of the file")
    header = json.loads(read(header_len))
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    return header, header_len


def _check_size(path: str) -> None:
    from . import _core  # the memory limit lives in the kernel
    size = os.path.getsize(path)
    if size > _core.get_memory_limit():
        raise MemoryError(f"path: {path!r} is {size / 2**30:.3g} GiB, over the memory limit "
                          f"of {_core.get_memory_limit() / 2**30:.3g} GiB "
                          f"(larimar_ext.set_memory_limit)")


def load(path: str | os.PathLike, kind: str) -> Tuple[Dict[str, Any], Dict[str, np.ndarray]]:
    """(config, arrays) of a file written by ``save`` for ``kind``; ValueError otherwise."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"path: no such file: {path!r}")
    _check_size(path)
    # One read of the file: header and arrays come from the same bytes, so a save landing
    # meanwhile cannot pair an old header with new arrays.
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ValueError(f"path: {path!r} cannot be read ({exc})") from exc
    try:
        header, _ = _header(io.BytesIO(data).read, len(data))
        metadata = header.get("__metadata__") or {}
        arrays = parse_safetensors(data)
    except Exception as exc:  # any parse failure (incl. dtypes numpy lacks) is a bad file
        raise ValueError(f"path: {path!r} is not a readable safetensors file ({exc})") from exc
    config, digests = _check_metadata(path, kind, metadata, arrays)
    for name, a in arrays.items():
        if _digest(a) != digests[name]:
            raise ValueError(f"path: {path!r} array {name!r} fails its checksum (corrupted)")
    return config, arrays


def _check_metadata(path: str, kind: str, metadata: Any,
                    names: Any) -> Tuple[Dict[str, Any], Dict[str, str]]:
    """The config and the arrays' digests of a header, checked: the format, its version, the
    config's own checksum, and one digest per array of ``names``."""
    if not isinstance(metadata, dict):
        raise ValueError(f"path: {path!r} has a damaged header")
    if metadata.get("format") != kind:
        raise ValueError(f"path: {path!r} holds {metadata.get('format')!r}, expected {kind!r}")
    if metadata.get("version") != str(FORMAT_VERSION):
        raise ValueError(f"path: {path!r} has format version {metadata.get('version')!r}; "
                         f"this larimar_ext reads version {FORMAT_VERSION}")
    try:
        config = json.loads(metadata["config"])
        digests = json.loads(metadata["sha256"])
    except (KeyError, json.JSONDecodeError) as exc:
        raise ValueError(f"path: {path!r} has a damaged header ({exc})") from exc
    if not isinstance(config, dict) or not isinstance(digests, dict):
        raise ValueError(f"path: {path!r} has a damaged header")
    if digests.pop(_CONFIG_DIGEST, None) != _header_digest(kind, metadata["config"]):
        raise ValueError(f"path: {path!r} header fails its checksum (corrupted config)")
    if set(digests) != set(names):
        raise ValueError(f"path: {path!r} arrays {sorted(names)} do not match its header "
                         f"{sorted(digests)}")
    return config, digests


def _entries(header: Dict[str, Any], data_size: int) -> Dict[str, Tuple[np.dtype, tuple, int]]:
    """name -> (dtype, shape, data offset) of a safetensors header, every field checked: the
    dtype known, the shape non-negative integers, the byte range exactly the array's size,
    inside the data, and the ranges tiling it without overlap."""
    out, spans = {}, []
    for name, e in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(e, dict) or e.get("dtype") not in _DTYPES:
            raise ValueError(f"array {name!r}: unknown dtype")
        shape, offsets = e.get("shape"), e.get("data_offsets")
        if (not isinstance(shape, list) or not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0
                           for x in shape + offsets)):
            raise ValueError(f"array {name!r}: damaged shape or offsets")
        dtype = np.dtype(_DTYPES[e["dtype"]])
        begin, end = offsets
        if end - begin != math.prod(shape) * dtype.itemsize:
            raise ValueError(f"array {name!r}: byte range does not match its shape")
        out[name] = (dtype, tuple(shape), begin)
        spans.append((begin, end))
    at = 0
    for begin, end in sorted(spans):
        if begin != at:
            raise ValueError("array byte ranges overlap or leave gaps")
        at = end
    if at != data_size:
        raise ValueError("array byte ranges do not cover the data")
    return out


class ArraySpec(NamedTuple):
    """An array of a file, before it is read: what ``expect`` checks."""
    dtype: np.dtype
    shape: tuple


class RowFile:
    """A file written by ``save`` whose arrays all have n rows, streamed in blocks of rows
    instead of read whole: the memory a load needs is one block beside the object it
    builds, not the file. Opening checks the header as ``load`` does; ``blocks`` checks
    every array's digest after the last block, so a caller builds a fresh object from the
    blocks and drops it if that raises (ValueError on a bad file, as ``load``).

    Use as a context manager: ``config``, ``arrays`` (name -> ArraySpec) and ``rows``.
    ``to_memory=False`` for a file that is mapped, not loaded: it may exceed the memory
    limit."""

    def __init__(self, path: str | os.PathLike, kind: str, to_memory: bool = True) -> None:
        self.path = path = os.fspath(path)
        if not os.path.isfile(path):
            raise ValueError(f"path: no such file: {path!r}")
        if to_memory:
            _check_size(path)
        try:
            self._file = open(path, "rb")
        except OSError as exc:
            raise ValueError(f"path: {path!r} cannot be read ({exc})") from exc
        try:
            self._open(kind)
        except BaseException:
            self._file.close()
            raise

    def _open(self, kind: str) -> None:
        f, path = self._file, self.path
        size = os.fstat(f.fileno()).st_size
        try:
            header, header_len = _header(f.read, size)
            self._entries = _entries(header, size - 8 - header_len)
        except Exception as exc:
            raise ValueError(f"path: {path!r} is not a readable safetensors file ({exc})") \
                from exc
        self.config, self._digests = _check_metadata(
            path, kind, header.get("__metadata__") or {}, self._entries)
        rows = {shape[0] if shape else -1 for _, shape, _ in self._entries.values()}
        if len(rows) != 1 or -1 in rows:
            raise ValueError(f"path: {path!r} arrays do not share one number of rows")
        self.rows = rows.pop()
        self.arrays = {name: ArraySpec(dtype, shape)
                       for name, (dtype, shape, _) in self._entries.items()}
        self._base = 8 + header_len

    def blocks(self, block_bytes: int = 16 << 20) -> Iterator[Dict[str, np.ndarray]]:
        """Every array's rows start:stop at once, in order, then the digests' check."""
        row_bytes = {name: dtype.itemsize * math.prod(shape[1:])
                     for name, (dtype, shape, _) in self._entries.items()}
        step = max(1, block_bytes // max(1, *row_bytes.values()))
        hashers = {name: hashlib.sha256() for name in self._entries}
        for start in range(0, self.rows, step):
            stop = min(self.rows, start + step)
            block = {}
            for name, (dtype, shape, offset) in self._entries.items():
                a = np.empty((stop - start,) + shape[1:], dtype)
                if a.nbytes:
                    self._file.seek(self._base + offset + start * row_bytes[name])
                    view = memoryview(a).cast("B")
                    if self._file.readinto(view) != a.nbytes:
                        raise ValueError(f"path: {self.path!r} is truncated")
                    hashers[name].update(view)
                block[name] = a
            yield block
        for name, h in hashers.items():
            if h.hexdigest() != self._digests[name]:
                raise ValueError(f"path: {self.path!r} array {name!r} fails its checksum "
                                 "(corrupted)")

    def verify(self) -> None:
        """Reads the file once through and checks every array's digest (ValueError)."""
        for _ in self.blocks():
            pass

    def mapped(self, name: str) -> np.ndarray:
        """Array ``name`` as a read-only memory map of the file: no read until it is used."""
        dtype, shape, offset = self._entries[name]
        return np.memmap(self.path, dtype=dtype, mode="r", offset=self._base + offset,
                         shape=shape)

    def __enter__(self) -> "RowFile":
        return self

    def __exit__(self, *exc: Any) -> None:
        self._file.close()


def build(path: Any, construct):
    """Runs construct() on checked arrays, reporting a refusal by the kernel (NaN in an
    array, an invalid config value, duplicate keys ...) as a ValueError naming the file."""
    try:
        return construct()
    except (ValueError, TypeError) as exc:
        raise ValueError(f"path: {os.fspath(path)!r} holds an invalid memory ({exc})") from exc


def expect(arrays: Mapping[str, np.ndarray], name: str, shape: Tuple[int, ...],
           dtype: np.dtype, path: Any) -> np.ndarray:
    """The array ``name`` with exactly this shape and dtype, or a ValueError."""
    if name not in arrays:
        raise ValueError(f"path: {os.fspath(path)!r} lacks the array {name!r}")
    a = arrays[name]
    if a.shape != tuple(shape) or a.dtype != np.dtype(dtype):
        raise ValueError(f"path: {os.fspath(path)!r} array {name!r} is {a.dtype}{list(a.shape)}, "
                         f"expected {np.dtype(dtype)}{list(shape)}")
    return a


def config_value(config: Mapping[str, Any], key: str, kind: type, path: Any) -> Any:
    value = config.get(key)
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        raise ValueError(f"path: {os.fspath(path)!r} config {key!r} = {value!r} is not a "
                         f"{kind.__name__}")
    return value
