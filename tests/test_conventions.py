"""Conventions a PyTorch or FAISS user expects of the package (issue: one home for each
idea, conventions part)."""
from __future__ import annotations

import inspect
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

import larimar_ext as lx


def _run_outside_checkout(code: str, tmp_path) -> None:
    """Run ``python -c code`` in a fresh interpreter whose working directory is outside the
    checkout: from its root, `import larimar_ext` would find the source folder instead of
    the installed package."""
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, cwd=tmp_path,
                   env={**os.environ, "PYTHONWARNINGS": "ignore"})


def test_every_load_is_a_classmethod():
    pytest.importorskip("torch")
    from larimar_ext.longcontext.memory import LongContextMemory
    for cls in (lx.KeyValueMemory, lx.EpisodicMemory, LongContextMemory):
        assert isinstance(inspect.getattr_static(cls, "load"), classmethod), cls.__name__


def test_import_and_numpy_ops_and_cli_help_never_load_torch(tmp_path):
    """torch costs seconds to import: ``import larimar_ext``, numpy calls and the CLI's
    ``--help`` must not load it (their timing is benchmarks/bench_startup.py's); the model
    stack (transformers) loads only with LongContextMemory, on first use."""
    code = ("import sys, numpy as np, larimar_ext as lx; "
            "W = lx.lstsq_write(np.eye(3, dtype=np.float32)[None], "
            "np.ones((1, 3, 2), np.float32)); assert W.shape == (1, 3, 2); "
            "from larimar_ext import cli; "
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m); "
            "import larimar_ext.longcontext.tasks; assert 'transformers' not in sys.modules; "
            "assert 'larimar_ext.longcontext.memory' not in sys.modules; "
            "from larimar_ext import LongContextMemory; "
            "assert LongContextMemory.__module__ == 'larimar_ext.longcontext.memory'")
    _run_outside_checkout(code, tmp_path)
    helps = ("import runpy, sys; sys.argv = ['larimar-ext', '--help']\n"
             "try:\n    runpy.run_module('larimar_ext', run_name='__main__')\n"
             "except SystemExit as e:\n    assert e.code in (0, None)\n"
             "assert 'torch' not in sys.modules")
    out = subprocess.run([sys.executable, "-c", helps], check=True, timeout=120, cwd=tmp_path,
                         capture_output=True, text=True)
    assert "usage" in out.stdout


def test_search_results_are_read_by_name():
    """search, search_and_reconstruct and topk return named tuples (FAISS returns (D, I),
    torch.topk (values, indices): a user reads ids and scores by name)."""
    import numpy as np
    rng = np.random.default_rng(0)
    keys = rng.standard_normal((20, 8)).astype(np.float32)
    mem = lx.KeyValueMemory(8, 3)
    mem.add(keys, rng.standard_normal((20, 3)).astype(np.float32))
    r = mem.search(keys[:2], 3)
    assert isinstance(r, lx.SearchResult) and r.ids.dtype == np.int64
    ids, scores = r                                   # still a tuple
    assert ids[0, 0] == 0 and ids[1, 0] == 1 and np.all(np.diff(r.scores, axis=1) <= 0)
    s = mem.search_and_reconstruct(keys[:2], 3)
    assert isinstance(s, lx.SearchAndReconstructResult)
    np.testing.assert_array_equal(s.ids, r.ids)
    np.testing.assert_array_equal(s.values, mem.reconstruct(s.ids.ravel()).reshape(2, 3, 3))
    t = lx.topk(keys[:2], keys, 3, metric="cosine")
    assert isinstance(t, lx.SearchResult) and t.ids[0, 0] == 0


def test_a_tensor_that_requires_grad_is_refused_with_the_differentiable_op_named():
    torch = pytest.importorskip("torch")
    W = torch.rand(1, 4, 3, requires_grad=True)
    Z = torch.rand(1, 4, 2)
    with pytest.raises(ValueError, match=r"W: requires grad.*larimar_ext\.torch_ops\.lstsq_write"):
        lx.lstsq_write(W, Z)
    with pytest.raises(ValueError, match=r"Q: requires grad.*larimar_ext\.torch_ops \("):
        lx.topk(torch.rand(2, 3, requires_grad=True), torch.rand(5, 3), 1)
    # detached, or under no_grad: the kernel result, as before
    assert lx.lstsq_write(W.detach(), Z).shape == (1, 3, 2)
    with torch.no_grad():
        assert lx.lstsq_write(W, Z).shape == (1, 3, 2)
    from larimar_ext import torch_ops
    assert torch_ops.lstsq_write(W, Z).grad_fn is not None


def test_the_generic_model_does_not_import_the_default_build(tmp_path):
    """larimar.py is the generic model: it reads and writes model folders through
    model/saved.py and never imports model/pretrained.py (the MiniLM + SmolLM2 build),
    which imports it; the package registers that build as the default, loaded on first
    use (issue: one home for each idea)."""
    pytest.importorskip("torch")
    code = ("import sys; import larimar_ext.model.larimar as m; "
            "assert 'larimar_ext.model.pretrained' not in sys.modules, 'imported'; "
            "assert callable(m.LarimarModel.from_pretrained); "
            "from larimar_ext.model import saved; b = saved.default_build(); "
            "from larimar_ext.model import pretrained; "
            "assert b is pretrained.FOLDER_BUILD, b; "
            "assert b.default_dir() == pretrained.default_model_dir()")
    _run_outside_checkout(code, tmp_path)


_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _tracked(*patterns: str) -> list[str]:
    """The checkout's files git tracks that match the patterns (paths from the root)."""
    if not (_ROOT / ".git").exists():
        pytest.skip("not a git checkout: the linters run on the tracked files")
    out = subprocess.run(["git", "ls-files", "--", *patterns], cwd=_ROOT, check=True,
                         capture_output=True, text=True).stdout
    return out.split()


def test_python_passes_ruff_with_the_repo_configuration():
    """pyproject.toml's [tool.ruff]: pyflakes and pycodestyle, lines of 100 at most."""
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "."],
                            cwd=_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_cpp_is_clang_formatted_with_the_repo_style():
    """.clang-format (Google style, 100 columns) over csrc/ and the bindings."""
    binary = shutil.which("clang-format")
    assert binary, "clang-format is not on PATH: it comes with the test extra"
    files = _tracked("*.cpp", "*.hpp")
    assert files, "no C++ files found"
    result = subprocess.run([binary, "--dry-run", "--Werror", *files], cwd=_ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-4000:]
