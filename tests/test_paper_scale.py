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


def test_throughput_window_counts_the_steps_timed_after_a_resume(byte_data, tmp_path):
    common = ["train.py", "--size", "20k", "--data", byte_data, "--out", tmp_path, "--max_iters", "6",
              "--seq_len", "64", "--batch_size", "4", "--eval_tokens", "2048", "--log_interval", "2"]
    for extra in (["--stop_at", "3"], ["--resume"]):
        r = run_script(*common, *extra)
        assert r.returncode == 0, r.stderr[-2000:]
    rows = [h for h in checkpoint.load(tmp_path / "ckpt.pt")["train"]["history"] if "loss" in h]
    # each run's first step (compile, warm-up) is not timed; the resumed run's first window, steps
    # 3 -> 4, has nothing else; before, it counted 2 steps in the time of one
    assert [(h["step"], h["timed_steps"]) for h in rows] == [(2, 1), (4, 0), (6, 2)]
    assert rows[1]["tok_per_s"] is None and rows[1]["mfu"] is None
    assert rows[0]["tok_per_s"] > 0 and rows[2]["tok_per_s"] > 0
    assert "tok/s n/a (first step of the run" in (tmp_path / "train.log").read_text()


def test_one_peak_table_for_train_and_bench():
    import bench
    import train
    from flops import device_peak
    assert train.device_peak is device_peak and bench.device_peak is device_peak
    names = {"NVIDIA H100 PCIe": 756e12, "NVIDIA H100 80GB HBM3": 989e12, "NVIDIA H100 NVL": 835e12,
             "NVIDIA H200": 989e12, "NVIDIA A100-SXM4-80GB": 312e12, "NVIDIA A100 80GB PCIe": 312e12,
             "Tesla T4": None}
    assert {n: device_peak(n) for n in names} == names
