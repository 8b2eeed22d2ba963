"""train.py at paper scale without a GPU: the memory plan refuses what does not fit before anything
is read or built; activation checkpointing changes memory, not the run."""
import pytest
import torch

import checkpoint
from conftest import assert_user_error, run_script
from model import count_params, get_config


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
    for extra, status in ((["--stop_at", "3"], 3), (["--resume"], 0)):  # 3: stopped before the end
        r = run_script(*common, *extra)
        assert r.returncode == status, r.stderr[-2000:]
    rows = [h for h in checkpoint.load(tmp_path / "ckpt.pt")["train"]["history"] if "loss" in h]
    # each run's first step (compile, warm-up) is not timed; the resumed run's first window, steps
    # 3 -> 4, has nothing else; before, it counted 2 steps in the time of one
    assert [(h["step"], h["timed_steps"]) for h in rows] == [(2, 1), (4, 0), (6, 2)]
    assert rows[1]["tok_per_s"] is None and rows[1]["mfu"] is None
    assert rows[0]["tok_per_s"] > 0 and rows[2]["tok_per_s"] > 0
    assert "tok/s n/a (first step of the run" in (tmp_path / "train.log").read_text()


def test_one_peak_table_for_train_and_bench():
    from bench import gpu
    import train
    from flops import device_peak
    assert train.device_peak is device_peak and gpu.device_peak is device_peak
    names = {"NVIDIA H100 PCIe": 756e12, "NVIDIA H100 80GB HBM3": 989e12, "NVIDIA H100 NVL": 835e12,
             "NVIDIA H200": 989e12, "NVIDIA A100-SXM4-80GB": 312e12, "NVIDIA A100 80GB PCIe": 312e12,
             "Tesla T4": None}
    assert {n: device_peak(n) for n in names} == names


def test_start_up_weights_as_before(byte_data, tmp_path):
    """From scratch: the seeded initialisation of one process, as GPT(cfg) after manual_seed gave it
    before the meta-device start-up; with --init: the file's weights, trainable, nothing else drawn."""
    import train
    from model import GPT
    args = ["--size", "20k", "--data", str(byte_data), "--max_iters", "2", "--seed", "7"]
    torch.manual_seed(7)
    expected = GPT(get_config("20k")).state_dict()
    scratch = train.Trainer(train.parse_args(args + ["--out", str(tmp_path / "a")])).model.state_dict()
    assert scratch.keys() == expected.keys() and all(torch.equal(scratch[k], v) for k, v in expected.items())

    torch.manual_seed(11)
    src = GPT(get_config("20k"))
    checkpoint.save(tmp_path / "init.pt", checkpoint.make_checkpoint(src))
    grown = train.Trainer(train.parse_args(args + ["--out", str(tmp_path / "b"), "--init", str(tmp_path / "init.pt")]))
    for k, v in src.state_dict().items():
        assert torch.equal(grown.model.state_dict()[k], v), k
    assert all(p.requires_grad and not p.is_meta for p in grown.model.parameters())


START_UP = """
import resource, sys
import train
t = train.Trainer(train.parse_args(sys.argv[1:]))
assert all(p.requires_grad and not p.is_meta for p in t.model.parameters())
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)  # Linux: KiB
"""


@pytest.mark.slow  # writes and maps a 4 GB checkpoint
def test_1b_start_up_from_init_builds_no_full_copy(openstax, tmp_path):
    """Before: a random 1b model, then a second one for --init, then the file's weights: 2-3 full
    fp32 copies (4 GB each). Now: meta device, then the memory-mapped file's tensors."""
    data = tmp_path / "data"
    r = run_script("data/prepare.py", "--dataset", openstax, "--tokenizer", "gpt2", "--out", data,
                   "--tokens", 200_000)
    assert r.returncode == 0, r.stderr[-2000:]
    init = tmp_path / "init.pt"
    r = run_script("-c", "import sys, torch, checkpoint\nfrom model import GPT, get_config\n"
                   "with torch.device('meta'):\n    m = GPT(get_config('1b'))\n"
                   "m.to_empty(device='cpu')\ncheckpoint.save(sys.argv[1], checkpoint.make_checkpoint(m))", init)
    assert r.returncode == 0, r.stderr[-2000:]
    full_copy = 4 * count_params(get_config("1b"))["total"]
    r = run_script("-c", START_UP, "--size", "1b", "--data", data, "--out", tmp_path / "run", "--max_iters", "1",
                   "--batch_size", "1", "--init", init, "--no-memory_check")
    assert r.returncode == 0, r.stderr[-2000:]
    assert int(r.stdout.split()[-1]) < 0.25 * full_copy


def test_gpu_bench_runs_what_matters_first_and_reports_peak_memory(monkeypatch):
    import argparse

    from bench import gpu
    seen = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(gpu, "run_sections", lambda sections, out, deadline: seen.update(
        names=[name for name, _ in sections]))
    gpu.run_gpu_all(argparse.Namespace(budget_s=480, size="1b", batch=8, steps=10, warmup=3,
                                         model_compile=True, out="unused"))
    # the kernel comparisons before the two compiled 1b models, which may use up a short GPU slot
    assert seen["names"] == ["correctness", "attention", "layer_norm", "model"]
    mode = {"tokens_per_s": 1e5, "mfu": 0.4, "max_memory_allocated_gb": 61.25, "losses": [11.0, 10.9],
            "max_loss_diff_vs_first_mode": 0.0}
    md = gpu._md_gpu({"machine": {}, "max_memory_allocated_gb": {"correctness": 1.5, "model": 61.25},
                        "model": {"size": "1b", "batch": 8, "seq_len": 1024, "skipped": [],
                                  "modes": {"compile+bf16+fused": mode}}})
    assert "| compile+bf16+fused | 100000 | 40.0% | 61.2 |" in md
    assert "Peak memory allocated per section (GB): correctness 1.5, model 61.2" in md
    assert gpu.max_memory_gb("cpu") is None
