"""Results files: the JSON records of benchmark and task runs.

The one writer of results for the package's runners (``longcontext.bench``,
``longcontext.ruler``: what the command line writes) and for the benchmark scripts
(``benchmarks/_common.py``, which the installed package cannot import, so the writer lives
here). numpy scalars are written as numbers and arrays as lists; anything else JSON does
not know is refused, or written as its ``str()`` by a ``lenient`` writer (the benchmarks
record library objects, such as paths, by name). numpy only.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

__all__ = ["json_default", "dumps", "write_json", "append_json_line"]


def json_default(o: Any, lenient: bool = False) -> Any:
    """``json``'s ``default`` for results: numpy integers and floats as numbers, arrays as
    lists; any other object as its ``str()`` if ``lenient``, else TypeError."""
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if lenient:
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def dumps(data: Any, *, indent: Optional[int] = None, lenient: bool = False) -> str:
    """``data`` as JSON text (``json.dumps`` with ``json_default``)."""
    return json.dumps(data, indent=indent, default=partial(json_default, lenient=lenient))


def write_json(path: Union[str, Path], data: Any, *, indent: Optional[int] = None,
               lenient: bool = False, newline: bool = False) -> Path:
    """Write ``data`` as JSON into file ``path`` (replacing it), ending with a newline if
    ``newline``; returns the path."""
    path = Path(path)
    path.write_text(dumps(data, indent=indent, lenient=lenient) + ("\n" if newline else ""))
    return path


def append_json_line(path: Union[str, Path], data: Any, *, lenient: bool = False) -> None:
    """Append ``data`` as one line of JSON to file ``path`` (a JSON-lines history)."""
    with open(path, "a") as f:
        f.write(dumps(data, lenient=lenient) + "\n")
