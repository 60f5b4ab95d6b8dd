"""The library's ops by name in torch.profiler tables and chrome traces.

``@profiled`` wraps a public function or method that calls the kernel so that, while a
profiler records, it runs inside a ``torch.profiler.record_function`` range named
``larimar_ext.<qualified name>`` (``larimar_ext.lstsq_write``,
``larimar_ext.KeyValueMemory.search``). With no profiler recording it costs a lookup of
torch's profiler flag, 73 ns a call (benchmarks/bench_profiling.py measures it against the
bare function), and torch is never imported: a profiler can only run once the caller has.
"""

from __future__ import annotations

import functools
import inspect
import sys
from typing import Any, Callable, Optional, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

PREFIX = "larimar_ext."

# [torch.autograd.profiler] once torch is imported: its _is_profiler_enabled is the flag
# torch keeps for fast Python-side checks, set by torch.profiler.profile and
# torch.autograd.profiler.profile alike.
_torch_profiler: list = [None]


def _find_torch_profiler() -> Optional[Any]:
    torch = sys.modules.get("torch")
    if torch is not None:
        _torch_profiler[0] = torch.autograd.profiler
    return _torch_profiler[0]


def profiler_active() -> bool:
    """Whether a torch profiler is recording, without importing torch."""
    p = _torch_profiler[0] or _find_torch_profiler()
    return p is not None and p._is_profiler_enabled


def _record_function(label: str) -> Any:
    return sys.modules["torch"].profiler.record_function(label)


class _Source:
    """A default value's name in generated source (its repr)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def profiled(fn: F) -> F:
    """``fn`` under its own record_function range while a profiler records.

    The wrapper is generated with ``fn``'s own parameter list, as dataclasses and
    namedtuple generate their methods: a ``*args, **kwargs`` forwarder costs about twice as
    much per call (about 140 ns against 70 ns here), a measurable share of a small op."""
    signature = inspect.signature(fn)
    params, forward, defaults = [], [], {}
    for p in signature.parameters.values():
        if p.default is not p.empty:
            defaults[f"_default_{p.name}"] = p.default
            p = p.replace(default=_Source(f"_default_{p.name}"))
        params.append(p.replace(annotation=p.empty))
        forward.append({p.VAR_POSITIONAL: f"*{p.name}", p.VAR_KEYWORD: f"**{p.name}",
                        p.KEYWORD_ONLY: f"{p.name}={p.name}"}.get(p.kind, p.name))
    plain = signature.replace(parameters=params, return_annotation=signature.empty)
    call = f"_fn({', '.join(forward)})"
    # a factory, so _fn, _label and the defaults are the wrapper's closure and everything
    # else is this module's globals; the first two lines are profiler_active() inlined (a
    # call of it would add half the wrapper's cost again)
    source = (f"def _factory(_fn, _label, {', '.join(defaults)}):\n"
              f"    def {fn.__name__}{plain}:\n"
              f"        _p = _torch_profiler[0] or _find_torch_profiler()\n"
              f"        if _p is not None and _p._is_profiler_enabled:\n"
              f"            with _record_function(_label):\n"
              f"                return {call}\n"
              f"        return {call}\n"
              f"    return {fn.__name__}\n")
    namespace: dict = {}
    # the source above, built from fn's own signature; tracebacks name it by fn
    exec(compile(source, f"<larimar_ext profiled wrapper of {fn.__qualname__}>", "exec"),
         globals(), namespace)
    wrapper = namespace["_factory"](fn, PREFIX + fn.__qualname__, **defaults)
    return functools.wraps(fn)(wrapper)  # type: ignore[return-value]
