"""Builds the kernel on its own (no Python headers) and runs its C++ tests: once as
released, once under AddressSanitizer + UndefinedBehaviorSanitizer (any report fails)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake not installed")
@pytest.mark.parametrize("sanitize", [False, True], ids=["release", "asan+ubsan"])
def test_kernel_builds_and_passes_standalone(tmp_path, sanitize):
    build = tmp_path / "build"
    configure = ["cmake", "-S", str(ROOT), "-B", str(build), "-DLARIMAR_BUILD_PYTHON=OFF",
                 "-DLARIMAR_BUILD_TESTS=ON", f"-DPython_EXECUTABLE={sys.executable}",
                 "-DCMAKE_BUILD_TYPE=Release", f"-DLARIMAR_SANITIZE={'ON' if sanitize else 'OFF'}"]
    if shutil.which("ninja"):
        configure += ["-G", "Ninja"]
    env = dict(os.environ, CMAKE_BUILD_PARALLEL_LEVEL="2")
    subprocess.run(configure, check=True, capture_output=True, env=env)
    subprocess.run(["cmake", "--build", str(build)], check=True, capture_output=True, env=env)
    run_env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=1",
                   UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1")
    result = subprocess.run([str(build / "kernel_tests")], capture_output=True, text=True,
                            env=run_env, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "0 failure(s)" in result.stdout
    assert "FAIL" not in result.stdout
    for report in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:"):
        assert report not in output, output
