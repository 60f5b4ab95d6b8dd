"""larimar_ext/_core.pyi against the compiled module: the same functions, classes, methods
and properties, with the binding's parameter names (read from pybind11's signatures), and
shipped with the package (PEP 561: py.typed beside it)."""
from __future__ import annotations

import ast
import inspect
import re
import subprocess
from pathlib import Path

import pytest

from larimar_ext import _core

ROOT = Path(__file__).resolve().parents[1]
STUB = ROOT / "larimar_ext" / "_core.pyi"


def _stub():
    """name -> ast node of every top-level def and class of the stub."""
    tree = ast.parse(STUB.read_text())
    out = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            out[node.name] = node
        elif isinstance(node, ast.AnnAssign):
            out[node.target.id] = node
    return out


def _stub_members(stub, cls: ast.ClassDef) -> dict:
    """The defs of a stub class and of its stub base classes."""
    members = {}
    for base in cls.bases:
        name = base.value.id if isinstance(base, ast.Subscript) else getattr(base, "id", None)
        if name in stub:
            members.update(_stub_members(stub, stub[name]))
    members.update({n.name: n for n in cls.body if isinstance(n, ast.FunctionDef)})
    members.update({n.target.id: n for n in cls.body if isinstance(n, ast.AnnAssign)})
    return members


def _params(node: ast.FunctionDef) -> list:
    return [a.arg for a in node.args.args if a.arg != "self"]


def _runtime_params(fn, name: str) -> set:
    """The parameter lists of every overload in pybind11's docstring of ``fn``."""
    found = set()
    for m in re.finditer(rf"(?:^|\n)(?:\d+\. )?{re.escape(name)}\(", fn.__doc__ or ""):
        depth, i, start = 1, m.end(), m.end()
        while depth:
            depth += {"(": 1, "[": 1, ")": -1, "]": -1}.get(fn.__doc__[i], 0)
            i += 1
        args, depth, cur = [], 0, ""
        for ch in fn.__doc__[start:i - 1] + ",":
            depth += {"(": 1, "[": 1, ")": -1, "]": -1}.get(ch, 0)
            if ch == "," and depth == 0:
                args.append(cur.split(":")[0].strip())
                cur = ""
            else:
                cur += ch
        found.add(tuple(a for a in args if a and a != "self"))
    found.discard(("*args", "**kwargs"))  # the heading line of an overloaded function
    return found


def _public(obj) -> list:
    return [n for n in vars(obj) if not n.startswith("_") or n in ("__init__", "__len__")]


def test_stub_names_the_module_exactly():
    stub = _stub()
    runtime = set(_public(_core)) | {"__version__"}
    declared = {n for n in stub if not n.startswith("_")} | {"__version__"}
    assert declared == runtime, (sorted(runtime - declared), sorted(declared - runtime))


@pytest.mark.parametrize("name", sorted(n for n in _public(_core)
                                        if inspect.isbuiltin(getattr(_core, n))))
def test_stub_function_parameters(name):
    node = _stub()[name]
    overloads = _runtime_params(getattr(_core, name), name)
    assert overloads, f"no signature in the docstring of _core.{name}"
    assert {tuple(_params(node))} == overloads, (name, _params(node), overloads)


@pytest.mark.parametrize("name", sorted(n for n in _public(_core)
                                        if inspect.isclass(getattr(_core, n))))
def test_stub_class_members(name):
    stub = _stub()
    members = _stub_members(stub, stub[name])
    cls = getattr(_core, name)
    for attr in _public(cls):
        assert attr in members, f"{name}.{attr} is not in the stub"
        static = inspect.getattr_static(cls, attr)
        if isinstance(static, property):  # a read-only attribute: `name: Final[type]`
            node = members[attr]
            assert isinstance(node, ast.AnnAssign) and "Final" in ast.unparse(node.annotation), \
                f"{name}.{attr} is a read-only property: declare it Final"
            continue
        overloads = _runtime_params(getattr(cls, attr), attr)
        assert {tuple(_params(members[attr]))} == overloads, (name, attr, overloads)
    extra = set(members) - set(_public(cls))
    assert not extra, f"the stub of {name} declares {sorted(extra)}, which the module lacks"


def test_stub_and_marker_ship_in_the_package():
    """Both sit in larimar_ext/ (the wheel's package, pyproject.toml wheel.packages), which
    the wheel copies whole but for files git ignores; scripts/check_wheel.sh checks the
    built wheel itself."""
    assert STUB.is_file() and (ROOT / "larimar_ext" / "py.typed").is_file()
    assert 'wheel.packages = ["larimar_ext"]' in (ROOT / "pyproject.toml").read_text()
    ignored = subprocess.run(["git", "check-ignore", "larimar_ext/_core.pyi",
                              "larimar_ext/py.typed"],
                             cwd=ROOT, capture_output=True, text=True)
    assert ignored.returncode == 1 and not ignored.stdout, ignored.stdout  # 1: none ignored
