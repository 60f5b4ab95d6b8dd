"""Safetensors persistence shared by the memory classes.

A file holds named arrays plus a JSON header (``__metadata__``) with the format name, the
format version, the object's config and a SHA-256 of every array. Saves are atomic (write a
temporary file beside the target, fsync, rename); loads check everything before any state
is built. No pickle anywhere.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from typing import Any, Dict, Mapping, Tuple

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


def save(path: str | os.PathLike, kind: str, config: Mapping[str, Any],
         arrays: Mapping[str, np.ndarray]) -> None:
    path = os.fspath(path)
    arrays = {name: np.ascontiguousarray(a) for name, a in arrays.items()}
    config_json = json.dumps(dict(config), sort_keys=True)
    digests = {name: _digest(a) for name, a in arrays.items()}
    digests[_CONFIG_DIGEST] = _header_digest(kind, config_json)
    metadata = {
        "format": kind,
        "version": str(FORMAT_VERSION),
        "config": config_json,
        "sha256": json.dumps(digests, sort_keys=True),
    }
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".larimar-", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        save_file(arrays, tmp, metadata=metadata)
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


def load(path: str | os.PathLike, kind: str) -> Tuple[Dict[str, Any], Dict[str, np.ndarray]]:
    """(config, arrays) of a file written by ``save`` for ``kind``; ValueError otherwise."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"path: no such file: {path!r}")
    from . import _core  # the memory limit lives in the kernel
    size = os.path.getsize(path)
    if size > _core.get_memory_limit():
        raise MemoryError(f"path: {path!r} is {size / 2**30:.3g} GiB, over the memory limit "
                          f"of {_core.get_memory_limit() / 2**30:.3g} GiB "
                          f"(larimar_ext.set_memory_limit)")
    # One read of the file: header and arrays come from the same bytes, so a save landing
    # meanwhile cannot pair an old header with new arrays.
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ValueError(f"path: {path!r} cannot be read ({exc})") from exc
    try:
        header_len = int.from_bytes(data[:8], "little")
        if len(data) < 8 or header_len > len(data) - 8:
            raise ValueError("header length beyond the end of the file")
        header = json.loads(data[8:8 + header_len])
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
        metadata = header.get("__metadata__") or {}
        arrays = parse_safetensors(data)
    except Exception as exc:  # any parse failure (incl. dtypes numpy lacks) is a bad file
        raise ValueError(f"path: {path!r} is not a readable safetensors file ({exc})") from exc
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
    if set(digests) != set(arrays):
        raise ValueError(f"path: {path!r} arrays {sorted(arrays)} do not match its header "
                         f"{sorted(digests)}")
    for name, a in arrays.items():
        if _digest(a) != digests[name]:
            raise ValueError(f"path: {path!r} array {name!r} fails its checksum (corrupted)")
    return config, arrays


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
