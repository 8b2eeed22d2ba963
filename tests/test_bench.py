"""bench/cpu.py's CPU training-step benchmark and the choices of train.py it times."""
import json

import pytest
import torch

from bench.common import StepMode
from conftest import assert_user_error, run_script
from train import TrainConfig, compute_choices
from util import UserError


def test_compute_choices_per_device():
    auto = TrainConfig()
    assert compute_choices(auto, torch.device("cpu")) == (torch.float32, False)
    assert compute_choices(auto, torch.device("cuda")) == (torch.bfloat16, True)
    forced = TrainConfig(dtype="bfloat16", compile="on")
    assert compute_choices(forced, torch.device("cpu")) == (torch.bfloat16, True)
    assert compute_choices(TrainConfig(compile="off"), torch.device("cuda")) == (torch.bfloat16, False)


def test_step_modes():
    assert StepMode.parse("plain") == StepMode()
    assert StepMode.parse("train") == StepMode(fused=True)  # train.py on CPU: eager float32, fused AdamW
    assert StepMode.parse("train", torch.device("cuda")) == StepMode(compile=True, bf16=True, fused=True, kernels=True)
    assert StepMode.parse("train+t1") == StepMode(fused=True, threads=1)
    assert StepMode.parse("compile+bf16+fused+t2") == StepMode(compile=True, bf16=True, fused=True, threads=2)
    with pytest.raises(UserError, match="unknown step mode part 'fast'"):
        StepMode.parse("fused+fast")


def test_cpu_benchmark_runs_every_mode_from_one_init(tmp_path):
    proc = run_script("bench/cpu.py", "--sizes", "20k", "--steps", "2", "--warmup", "1",
                      "--cpu_modes", "plain,train,t1", "--out", tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "results_cpu.json").read_text())
    modes = res["family"][0]["modes"]
    assert list(modes) == ["plain", "train", "t1"] and modes["plain"]["speedup"] == 1.0
    # the same initial weights and batches: the first loss (before any update) agrees
    first = [m["losses"][0] for m in modes.values()]
    assert max(first) - min(first) < 1e-6, first
    assert all(len(m["seconds"]) == 2 and m["tokens_per_s"] > 0 for m in modes.values())
    row = res["family"][0]
    # which op is largest depends on what else runs on the machine: check the profile's form only,
    # the largest ops first, each a share of the step's op time, together at most all of it
    shares = list(row["profile"].values())
    assert row["profiled_mode"] == "train" and 1 <= len(shares) <= 6, row["profile"]
    assert shares == sorted(shares, reverse=True) and all(0 < x <= 1 for x in shares), row["profile"]
    assert sum(shares) <= 1 + 1e-9 and all(op.strip() for op in row["profile"]), row["profile"]
    md = (tmp_path / "results_cpu.md").read_text()
    assert "`train` is what train.py chooses" in md and all(op in md for op in row["profile"])
    attention = res["attention"][0]
    assert list(attention["ms"]) == ["sdpa", "sdpa_math", "explicit", "explicit_compiled"]
    assert attention["max_abs_diff"] < 1e-4 and min(attention["ms"].values()) > 0, attention
    assert_user_error(run_script("bench/cpu.py", "--cpu_modes", "plain,turbo", "--out", tmp_path), "turbo")
