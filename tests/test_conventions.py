"""Conventions a PyTorch or FAISS user expects of the package (issue: one home for each
idea, conventions part)."""
from __future__ import annotations

import inspect
import os
import subprocess
import sys

import pytest

import larimar_ext as lx


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
    # outside the checkout: from its root `import larimar_ext` finds the source folder
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, cwd=tmp_path,
                   env={**os.environ, "PYTHONWARNINGS": "ignore"})
    helps = ("import runpy, sys; sys.argv = ['larimar-ext', '--help']\n"
             "try:\n    runpy.run_module('larimar_ext', run_name='__main__')\n"
             "except SystemExit as e:\n    assert e.code in (0, None)\n"
             "assert 'torch' not in sys.modules")
    out = subprocess.run([sys.executable, "-c", helps], check=True, timeout=120, cwd=tmp_path,
                         capture_output=True, text=True)
    assert "usage" in out.stdout
