"""
The kernels compiled for a GPU on this CPU-only machine (bench/aot.py): Triton's compiler and the
ptxas it ships turn every launch into H100 (sm_90) machine code, which shows what the interpreter of
tests/test_kernels.py cannot: that the compiler accepts the code, that no autotuning candidate
spills registers or overflows shared memory, and that 16-bit attention runs on tensor cores.
"""
import json
import os

import pytest

from conftest import assert_user_error, run_script

pytest.importorskip("triton", reason="triton is not installed (pip install triton==3.7.1)")
from bench import aot  # noqa: E402

# without the interpreter: that is the point
COMPILER_ENV = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}


@pytest.fixture(scope="module")
def hopper(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("aot")
    proc = run_script("bench/aot.py", "--sm", "90", "--quick", "--out", out, env=COMPILER_ENV)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "results_aot.json").read_text())


def test_every_kernel_compiles_for_hopper(hopper):
    rows = hopper["rows"]
    assert hopper["problems"] == []
    assert {r["kernel"] for r in rows} == {"_ln_fwd", "_ln_bwd", "_attn_fwd", "_attn_bwd_delta",
                                           "_attn_bwd_dkdv", "_attn_bwd_dq"}
    for r in rows:
        assert "error" not in r and r["fits"], r
        assert 0 < r["registers"] <= 255, r
    assert all(r["spill_bytes"] == 0 for r in rows if r["kernel"].startswith("_ln"))


def test_attention_candidates_by_dtype(hopper):
    """bfloat16 tunes over the 16-bit candidates, each on tensor cores (Hopper's wgmma) and none
    spilling; float32 only over its own small tiles, on FMA (IEEE precision), one without spills
    (the `problems` check)."""
    import gpt_kernels as kernels
    rows = [r for r in hopper["rows"] if r["kernel"] in ("_attn_fwd", "_attn_bwd_dkdv", "_attn_bwd_dq")]
    for r in rows:
        config = (*r["tiles"].values(), r["num_warps"], r["num_stages"])
        if "bfloat16" in r["case"]:
            assert r["tensor_cores"] == "wgmma" and r["spill_bytes"] == 0, r
            assert config not in kernels.FLOAT32_TILES, r
        else:
            assert r["tensor_cores"] == "none", r
            assert config in kernels.FLOAT32_TILES, r
    per_kernel = {}
    for r in rows:
        per_kernel.setdefault((r["case"], r["kernel"]), []).append(r)
    assert {len(v) for (case, _), v in per_kernel.items() if "bfloat16" in case} == {4}
    assert {len(v) for (case, _), v in per_kernel.items() if "float32" in case} == {len(kernels.FLOAT32_TILES)}


def test_aot_problems_names_what_would_fail_on_a_gpu():
    ok = {"sm": 90, "case": "attention D=128 T=1024 bfloat16", "kernel": "_attn_fwd", "tiles": {},
          "registers": 200, "spill_bytes": 0, "shared_bytes": 1024, "fits": True, "tensor_cores": "wgmma"}
    assert aot.aot_problems([ok]) == []
    spilled = ok | {"spill_bytes": 64}
    too_big = ok | {"fits": False}
    assert aot.aot_problems([spilled, ok]) == []  # one good candidate per launch is enough
    assert "no candidate fits" in aot.aot_problems([spilled, too_big])[0]
    assert "tensor cores" in aot.aot_problems([ok | {"tensor_cores": "none"}])[0]
    broken = {k: v for k, v in ok.items() if k not in ("registers", "spill_bytes", "shared_bytes", "fits")}
    assert "CompilationError" in aot.aot_problems([broken | {"error": "CompilationError: x"}])[0]


def test_aot_bad_input(tmp_path):
    assert_user_error(run_script("bench/aot.py", "--sm", "75", "--out", tmp_path, env=COMPILER_ENV),
                      "--sm")
    interpreted = COMPILER_ENV | {"TRITON_INTERPRET": "1"}
    assert_user_error(run_script("bench/aot.py", "--quick", "--out", tmp_path, env=interpreted),
                      "TRITON_INTERPRET")
