"""train.py at paper scale without a GPU: the memory plan refuses what does not fit before anything
is read or built; activation checkpointing changes memory, not the run."""
import torch

import checkpoint
from conftest import assert_user_error, run_script


def test_paper_size_on_cpu_is_refused_up_front(tmp_path):
    # --data does not exist: the refusal comes first, before any data or model
    r = run_script("train.py", "--size", "8b", "--data", tmp_path / "none", "--max_iters", "1",
                   "--out", tmp_path / "run")
    assert_user_error(r, "--size 8b does not fit", "available host RAM", "--activation_checkpointing on")


def test_activation_checkpointing_gives_the_same_run(byte_data, tmp_path):
    runs = {}
    for mode in ("off", "on"):
        r = run_script("train.py", "--size", "50k", "--data", byte_data, "--out", tmp_path / mode,
                       "--max_iters", "4", "--seq_len", "64", "--batch_size", "4", "--eval_tokens", "2048",
                       "--log_interval", "1", "--activation_checkpointing", mode)
        assert r.returncode == 0, r.stderr[-2000:]
        assert f"activation checkpointing {mode}" in r.stdout
        runs[mode] = checkpoint.load(tmp_path / mode / "ckpt.pt")
    assert [h.get("loss") for h in runs["on"]["train"]["history"]] == \
        [h.get("loss") for h in runs["off"]["train"]["history"]]
    for k, v in runs["off"]["model"].items():
        assert torch.equal(runs["on"]["model"][k], v), k
