"""larimar_ext, torch, numpy and faiss loaded into one process in every relevant order.

Each of these brings native code with its own thread pool and, in a wheel install, its own
copy of a runtime: larimar_ext's libgomp (vendored by auditwheel as
larimar_ext.libs/libgomp-<hash>.so) and libscipy_openblas (from scipy-openblas32), torch's
torch/lib/libgomp.so.1, numpy's libscipy_openblas64_ (pthreads), faiss's own libgomp and
OpenBLAS. Load order decides which copy a shared SONAME resolves to, so each order runs in a
fresh interpreter: larimar_ext first, torch first, faiss first. In each, every library does
a computation whose result is checked against a float64 numpy reference (einsum, no BLAS),
first one after the other and then concurrently from two Python threads (larimar_ext
releases the GIL, so two OpenMP runtimes run at once). A crash fails the case through the
exit status; a hang through the subprocess timeout, after faulthandler has dumped every
thread's stack into the captured output.

A case whose first library is not installed is skipped; the others run with what is there.
So without faiss (it is not in the test extra) faiss-first is skipped and larimar_ext-first
and torch-first run with larimar_ext, torch and numpy.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import pytest

TIMEOUT_S = 60  # a case takes ~2-4 s on the 2-core machine; past this it is a hang

_CHILD = textwrap.dedent(r"""
    import faulthandler, json, sys
    faulthandler.enable()
    faulthandler.dump_traceback_later({watchdog}, exit=True)
    ORDER = {order!r}
    mods = {{}}
    for name in ORDER:
        mods[name] = __import__(name)
    import numpy as np
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(1234)

    def rel(got, ref):
        got = np.asarray(got, dtype=np.float64)
        return float(np.linalg.norm(got - ref) / np.linalg.norm(ref))

    def ref_mm(a, b):  # float64 product without any BLAS
        return np.einsum("ij,jk->ik", a.astype(np.float64), b.astype(np.float64),
                         optimize=False)

    def check_topk(ids, scores, q, keys, k, what):
        ids = np.asarray(ids); scores = np.asarray(scores, dtype=np.float64)
        full = ref_mm(q, keys.T)
        assert ids.shape == (q.shape[0], k), (what, ids.shape)
        assert np.all((ids >= 0) & (ids < keys.shape[0])), what
        got = np.take_along_axis(full, ids.astype(np.int64), axis=1)
        best = -np.sort(-full, axis=1)[:, :k]
        scale = max(1.0, float(np.abs(full).max()))
        assert np.abs(got - best).max() <= 1e-4 * scale, (what, "not the top-k")
        assert np.abs(scores - got).max() <= 1e-4 * scale, (what, "wrong scores")

    # inputs, made once, shared by every round
    B, N, K, C = 8, 48, 32, 40
    W = rng.standard_normal((B, N, K)).astype(np.float32)
    Z = rng.standard_normal((B, N, C)).astype(np.float32)
    M_ref = np.stack([np.linalg.pinv(W[b].astype(np.float64)) @ Z[b].astype(np.float64)
                      for b in range(B)])
    keys = rng.standard_normal((20000, 64)).astype(np.float32)
    q = rng.standard_normal((16, 64)).astype(np.float32)
    A = rng.standard_normal((256, 256)).astype(np.float32)
    Bm = rng.standard_normal((256, 256)).astype(np.float32)
    AB_ref = ref_mm(A, Bm)
    A64 = A.astype(np.float64)
    A64_ref = ref_mm(A64, A64)
    fkeys = rng.standard_normal((5000, 32)).astype(np.float32)
    fq = rng.standard_normal((64, 32)).astype(np.float32)

    def run_larimar():
        lx = mods["larimar_ext"]
        M = lx.lstsq_write(W, Z)
        assert rel(M, M_ref) < 1e-4, ("lstsq_write", rel(M, M_ref))
        ids, sc = lx.topk(q, keys, 5, metric="ip")
        check_topk(ids, sc, q, keys, 5, "larimar_ext.topk")
        return "larimar_ext"

    def run_torch():
        torch = mods["torch"]
        c = torch.from_numpy(A) @ torch.from_numpy(Bm)
        assert rel(c.numpy(), AB_ref) < 1e-5, ("torch matmul", rel(c.numpy(), AB_ref))
        return "torch"

    def run_numpy():
        assert rel(A64 @ A64, A64_ref) < 1e-12, "numpy float64 matmul"
        assert rel(A @ Bm, AB_ref) < 1e-5, "numpy float32 matmul"
        return "numpy"

    def run_faiss():
        faiss = mods["faiss"]
        index = faiss.IndexFlatIP(fkeys.shape[1])
        index.add(fkeys)
        sc, ids = index.search(fq, 4)
        check_topk(ids, sc, fq, fkeys, 4, "faiss IndexFlatIP")
        return "faiss"

    runners = {{"larimar_ext": run_larimar, "torch": run_torch, "numpy": run_numpy,
               "faiss": run_faiss}}
    todo = [runners[name] for name in ORDER]
    done = []
    for _ in range(2):                      # one after the other, twice
        done += [f() for f in todo]
    with ThreadPoolExecutor(2) as pool:     # and concurrently, larimar_ext against each other
        others = [f for f in todo if f is not run_larimar]
        futs = []
        for f in others * 2:
            futs.append(pool.submit(run_larimar))
            futs.append(pool.submit(f))
        done += [fut.result() for fut in futs]
    faulthandler.cancel_dump_traceback_later()

    lx = mods["larimar_ext"]
    libs = sorted({{line.split()[-1].rsplit("/", 1)[-1] for line in open("/proc/self/maps")
                    if any(s in line for s in ("gomp", "openblas", "omp.so", "iomp"))}})
    print("RESULT " + json.dumps({{"order": ORDER, "runs": len(done),
                                   "larimar_ext": lx.__file__,
                                   "blas": lx.info()["blas_vendor"], "libs": libs}}))
""")

ORDERS = {
    "larimar_ext-first": ["larimar_ext", "torch", "numpy", "faiss"],
    "torch-first": ["torch", "larimar_ext", "numpy", "faiss"],
    "faiss-first": ["faiss", "larimar_ext", "torch", "numpy"],
}


def _installed(name):
    return importlib.util.find_spec(name) is not None


@pytest.mark.parametrize("case", list(ORDERS))
def test_import_order(case, tmp_path):
    order = ORDERS[case]
    if not _installed(order[0]):
        pytest.skip(f"{order[0]} is not installed")
    # the other cases run with what is there (no faiss: larimar_ext, torch and numpy)
    order = [name for name in order if name in ("larimar_ext", "numpy") or _installed(name)]
    code = _CHILD.format(order=order, watchdog=TIMEOUT_S - 10)
    try:
        proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                              text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as e:  # pragma: no cover - only on a hang
        pytest.fail(f"{case}: hung for {TIMEOUT_S} s\nstdout:\n{e.stdout}\nstderr:\n{e.stderr}")
    assert proc.returncode == 0, (
        f"{case}: exit status {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, f"{case}: no result line\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    result = json.loads(lines[-1][len("RESULT "):])
    assert result["order"] == order
    # 2 sequential rounds over every library, then 2 concurrent pairs per other library
    assert result["runs"] == 2 * len(order) + 4 * (len(order) - 1)
    assert "OpenBLAS" in result["blas"], result["blas"]
    # scripts/check_wheel.sh sets this to make sure the installed wheel is what ran
    prefix = os.environ.get("LARIMAR_EXT_EXPECT_PREFIX")
    if prefix:
        assert result["larimar_ext"].startswith(prefix), (result["larimar_ext"], prefix)
    print(case, result["libs"])
