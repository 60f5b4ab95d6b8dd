"""``larimar-ext bench`` (larimar_ext/throughput.py) on tiny shapes: what it reports, not how
fast (timings are benchmarks' business, never a unit test's)."""
from __future__ import annotations

import json

import pytest

from larimar_ext.cli import main

TINY = ["bench", "--episode", "2,4,16,8", "--keys", "300", "--key-dim", "8", "--batches",
        "1,3", "--sequential", "16,8,6,2", "--repeats", "2"]


def test_bench_json_has_every_op_with_its_baseline_and_ceiling_share(capsys):
    assert main(TINY + ["--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["ceilings"]["gemm_gflops"] > 0 and res["ceilings"]["bandwidth_gbs"] > 0
    ops = [r["op"] for r in res["rows"]]
    assert ops == ["write", "address", "read", "search", "search", "sequential update"]
    for r in res["rows"]:
        assert 0 < r["seconds_min"] <= r["seconds_median"] <= r["seconds_max"]
        assert r["rate"] > 0 and r["share_of_ceiling"] > 0 and r["unit"] in ("GFLOP/s", "GB/s")
        assert r["baseline_seconds"] > 0 and r["speedup"] == pytest.approx(
            r["baseline_seconds"] / r["seconds_median"])
    # a one-query search is a scan (bandwidth), a batch a GEMM
    assert [r["unit"] for r in res["rows"] if r["op"] == "search"] == ["GB/s", "GFLOP/s"]
    assert res["config"]["episode"] == [2, 4, 16, 8] and res["machine"]["version"]


def test_bench_table_and_skipped_workloads(capsys):
    assert main(["bench", "--episode", "0", "--keys", "0", "--sequential", "8,4,4,1",
                 "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "ceilings (this machine, this run)" in out and "| sequential update |" in out
    assert "| write |" not in out and "| search |" not in out


@pytest.mark.parametrize("args, name", [(["--episode", "1,2,3"], "--episode"),
                                        (["--sequential", "8,x,4,1"], "--sequential"),
                                        (["--keys", "5", "--k", "9"], "--k"),
                                        (["--repeats", "0"], "--repeats"),
                                        (["--batches", "0,-1"], "--batches")])
def test_bench_bad_arguments_name_the_argument(args, name, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench"] + args)
    assert exc.value.code == 2
    assert name in capsys.readouterr().err
