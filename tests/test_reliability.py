"""Faults and mistakes: runs killed at random moments resume bit for bit, checkpoints are never
half-written nor code-carrying, and every user mistake gets one clear line (exit 2)."""
import argparse
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

import checkpoint
from conftest import ROOT, SHARED, assert_user_error, run_script
from model import GPT, PRESETS

TRAIN = ["train.py", "--size", "20k", "--batch_size", "4", "--seq_len", "64", "--eval_tokens", "1024"]


def train_cmd(data, out, *extra):
    return [sys.executable, *TRAIN, "--data", str(data), "--out", str(out), *map(str, extra)]


def history_losses(path):
    return [r["loss"] for r in checkpoint.load(path)["train"]["history"] if "loss" in r]


@pytest.mark.parametrize("kills", [pytest.param(10, id="10-kills"),
                                   pytest.param(20, id="20-kills", marks=pytest.mark.slow)])
def test_sigkill_at_random_moments_then_resume_is_bit_exact(byte_data, tmp_path, kills):
    steps = 3 * kills
    run = ["--max_iters", steps, "--ckpt_interval", 1, "--log_interval", 1, "--eval_interval", 5]
    ref = subprocess.run(train_cmd(byte_data, tmp_path / "ref", *run), cwd=ROOT, capture_output=True)
    assert ref.returncode == 0, ref.stderr
    rng, out, killed = random.Random(kills), tmp_path / "run", 0
    while True:
        proc = subprocess.Popen(train_cmd(byte_data, out, *run, "--resume"), cwd=ROOT, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        if killed == kills:
            proc.communicate(timeout=600)
            assert proc.returncode == 0
            break
        wait_lines = rng.randint(1, 4)  # then die during the step, the evaluation or the checkpoint write
        for line in proc.stdout:
            wait_lines -= "| loss" in line
            if wait_lines == 0:
                time.sleep(rng.uniform(0, 0.02))
                break
        proc.kill()
        proc.wait()
        killed += 1
        if (out / "ckpt.pt").exists():
            ck = checkpoint.load(out / "ckpt.pt")  # never unreadable, whenever the kill came
            if ck["train"]["done"]:
                break
    a, b = checkpoint.load(tmp_path / "ref" / "ckpt.pt"), checkpoint.load(out / "ckpt.pt")
    assert b["train"]["done"] and b["train"]["step"] == steps
    assert history_losses(out / "ckpt.pt") == history_losses(tmp_path / "ref" / "ckpt.pt")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for k, v in a["optimizer"]["state"].items():
        assert all(torch.equal(v[m], b["optimizer"]["state"][k][m]) for m in v)
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert rows == json.loads(json.dumps(b["train"]["history"]))


def test_ctrl_c_writes_a_checkpoint_and_says_how_to_resume(byte_data, tmp_path):
    """SIGINT (Ctrl-C) ends the step, writes a checkpoint (none was due), exits 130 (a launcher such
    as run_family.sh stops too) and names that checkpoint; --resume continues from it."""
    run = ["--max_iters", 100_000, "--ckpt_interval", 100_000, "--log_interval", 1]
    proc = subprocess.Popen(train_cmd(byte_data, tmp_path, *run), cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    for line in proc.stdout:
        if "| loss" in line:
            break
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    step = checkpoint.load(tmp_path / "ckpt.pt")["train"]["step"]
    assert 0 < step < 100_000
    assert f"the last checkpoint is {tmp_path / 'ckpt.pt'} (step {step}/100000); the same command with " \
           "--resume continues from it" in err, err
    resumed = subprocess.run(train_cmd(byte_data, tmp_path, *run, "--resume", "--stop_at", step + 1), cwd=ROOT,
                             capture_output=True, text=True)
    assert resumed.returncode == 0 and f"resumed {tmp_path / 'ckpt.pt'} at step {step}/" in resumed.stdout


def test_checkpoint_with_pickled_code_is_refused(tmp_path):
    # any non-tensor object stands for a payload whose unpickling would run code
    torch.save({"format": checkpoint.FORMAT, "obj": argparse.Namespace(payload="code")}, tmp_path / "evil.pt")
    with pytest.raises(checkpoint.CheckpointError, match="pickled"):
        checkpoint.load(tmp_path / "evil.pt")


def test_write_error_mid_save_keeps_the_previous_checkpoint(byte_data, tmp_path):
    good = subprocess.run(train_cmd(byte_data, tmp_path, "--max_iters", 4, "--stop_at", 2), cwd=ROOT)
    assert good.returncode == 0
    size = (tmp_path / "ckpt.pt").stat().st_size

    def small_files():  # the next checkpoint cannot be written whole: EFBIG, as on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (size // 2, size // 2))

    proc = subprocess.run(train_cmd(byte_data, tmp_path, "--max_iters", 4, "--resume"), cwd=ROOT,
                          capture_output=True, text=True, preexec_fn=small_files)
    assert_user_error(proc, "writing", "intact")
    assert checkpoint.load(tmp_path / "ckpt.pt")["train"]["step"] == 2
    assert not list(tmp_path.glob(".ckpt.pt.*"))  # no temp file left behind


def test_nan_loss_stops_with_the_last_good_checkpoint(byte_data, tmp_path):
    proc = subprocess.run(train_cmd(byte_data, tmp_path, "--max_iters", 50, "--ckpt_interval", 1,
                                    "--lr", 1e12, "--warmup", 0, "--grad_clip", 0),
                          cwd=ROOT, capture_output=True, text=True)
    assert_user_error(proc, "non-finite", "last good checkpoint")
    ck = checkpoint.load(tmp_path / "ckpt.pt")
    assert all(torch.isfinite(v).all() for v in ck["model"].values())
    skip = subprocess.run(train_cmd(byte_data, tmp_path / "skip", "--max_iters", 50, "--lr", 1e12,
                                    "--warmup", 0, "--grad_clip", 0, "--on_nan", "skip"),
                          cwd=ROOT, capture_output=True, text=True)
    assert_user_error(skip, "non-finite")
    assert "step skipped" in skip.stdout


# ---------------------------------------------------------------------------------------------
# The table of bad inputs: each gives exactly one `error:` line on stderr and exit code 2.

@pytest.fixture(scope="module")
def fx(byte_data, tmp_path_factory):
    """Files the bad inputs are made of: a good checkpoint, broken ones, broken data folders."""
    d = tmp_path_factory.mktemp("bad")
    ok = subprocess.run(train_cmd(byte_data, d / "run", "--max_iters", 2), cwd=ROOT)
    assert ok.returncode == 0
    good = d / "run" / "ckpt.pt"
    raw = good.read_bytes()
    (d / "corrupt.pt").write_bytes(b"\x00garbage" * 100)
    (d / "truncated.pt").write_bytes(raw[: len(raw) // 2])
    torch.save({"state_dict": {"w": torch.zeros(2)}}, d / "foreign.pt")
    checkpoint.save(d / "50k.pt", checkpoint.make_checkpoint(GPT(PRESETS["50k"])))
    torch.save({"format": checkpoint.FORMAT, "obj": argparse.Namespace(payload="code")}, d / "pickled.pt")
    for name, edit in {"gpt2": {"tokenizer": "gpt2", "vocab_size": 50257},
                       "vocab300": {"vocab_size": 300}, "truncated": {"train_tokens": 10**9}}.items():
        shutil.copytree(byte_data, d / f"data_{name}")
        meta = json.loads((d / f"data_{name}" / "meta.json").read_text())
        (d / f"data_{name}" / "meta.json").write_text(json.dumps({**meta, **edit}))
    shutil.copytree(byte_data, d / "data_empty")
    (d / "data_empty" / "train.bin").write_bytes(b"")
    (d / "afile").write_text("x")
    (d / "empty_dir").mkdir()
    (d / "bad.jsonl").write_text("not json\n")
    return {"d": d, "good": good, "data": byte_data}


def t(*a):
    return ["train.py", "--size", "20k", "--max_iters", "2", "--eval_tokens", "1024", *a]


# (id, argv as a function of the fixtures, words the error line must contain, extra env)
BAD_INPUTS = [
    ("prepare-missing", lambda f: ["data/prepare.py", "--dataset", f["d"] / "nope", "--out", f["d"] / "o"], "does not exist"),
    ("prepare-empty-folder", lambda f: ["data/prepare.py", "--dataset", f["d"] / "empty_dir", "--out", f["d"] / "o"], "no "),
    ("prepare-bad-jsonl", lambda f: ["data/prepare.py", "--dataset", f["d"] / "bad.jsonl", "--tokenizer", "bytes", "--out", f["d"] / "o"], "text"),
    ("prepare-negative-tokens", lambda f: ["data/prepare.py", "--dataset", f["d"] / "bad.jsonl", "--tokens", "-5", "--out", f["d"] / "o"], "--tokens"),
    ("prepare-out-not-writable", lambda f: ["data/prepare.py", "--dataset", SHARED / "data/corpus/fineweb_edu_sample150.jsonl", "--tokenizer", "bytes", "--out", f["d"] / "afile" / "o"], "cannot write"),
    ("train-unknown-size", lambda f: ["train.py", "--size", "3b", "--data", f["data"], "--max_iters", "2"], "unknown size"),
    ("train-missing-data", lambda f: t("--data", f["d"] / "nope"), "no prepared data"),
    ("train-empty-data", lambda f: t("--data", f["d"] / "data_empty"), "empty"),
    ("train-truncated-data", lambda f: t("--data", f["d"] / "data_truncated"), "truncated"),
    ("train-tokenizer-mismatch", lambda f: t("--data", f["d"] / "data_gpt2"), "tokenized with gpt2"),
    ("train-ids-beyond-vocab", lambda f: t("--data", f["d"] / "data_vocab300"), "vocab 300"),
    ("train-zero-budget", lambda f: ["train.py", "--size", "20k", "--data", f["data"], "--tokens", "0"], "budget"),
    ("train-negative-lr", lambda f: t("--data", f["data"], "--lr", "-1"), "--lr"),
    ("train-init-other-size", lambda f: ["train.py", "--size", "50k", "--data", f["data"], "--max_iters", "2", "--init", f["good"]], "expand.py"),
    ("train-init-missing", lambda f: t("--data", f["data"], "--init", f["d"] / "nope.pt"), "does not exist"),
    ("train-init-corrupt", lambda f: t("--data", f["data"], "--init", f["d"] / "corrupt.pt"), "corrupt"),
    ("train-init-truncated", lambda f: t("--data", f["data"], "--init", f["d"] / "truncated.pt"), "truncated"),
    ("train-init-pickled", lambda f: t("--data", f["data"], "--init", f["d"] / "pickled.pt"), "pickled"),
    ("train-init-foreign", lambda f: t("--data", f["data"], "--init", f["d"] / "foreign.pt"), "not a checkpoint of this project"),
    ("train-resume-changed", lambda f: ["train.py", "--size", "20k", "--data", f["data"], "--max_iters", "3", "--out", f["d"] / "run", "--resume"], "changed since"),
    ("train-out-not-writable", lambda f: t("--data", f["data"], "--out", f["d"] / "afile" / "run"), "cannot create"),
    ("train-seq-beyond-context", lambda f: t("--data", f["data"], "--seq_len", "1000"), "exceeds"),
    ("train-no-gpu", lambda f: t("--data", f["data"], "--device", "cuda"), "no CUDA"),
    ("train-bad-torchrun-env", lambda f: t("--data", f["data"]), "torchrun", {"RANK": "x", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}),
    ("expand-same-size", lambda f: ["expand.py", "--src", f["good"], "--size", "20k", "--out", f["d"] / "e.pt"], "equals"),
    ("expand-shrink", lambda f: ["expand.py", "--src", f["d"] / "50k.pt", "--size", "20k", "--out", f["d"] / "e.pt"], "shrink"),
    ("expand-other-family", lambda f: ["expand.py", "--src", f["good"], "--size", "1b", "--out", f["d"] / "e.pt"], "across families"),
    ("expand-unknown-method", lambda f: ["expand.py", "--src", f["good"], "--size", "50k", "--method", "magic", "--out", f["d"] / "e.pt"], "unknown method"),
    ("expand-foreign", lambda f: ["expand.py", "--src", f["d"] / "foreign.pt", "--size", "50k", "--out", f["d"] / "e.pt"], "not a checkpoint"),
    ("evaluate-missing-ckpt", lambda f: ["evaluate.py", "--ckpt", f["d"] / "nope.pt", "--tasks", "ppl", "--val-data", f["data"], "--out", f["d"] / "r"], "does not exist"),
    ("evaluate-unknown-task", lambda f: ["evaluate.py", "--ckpt", f["good"], "--tasks", "mmlu", "--out", f["d"] / "r"], "unknown task"),
    ("evaluate-data-mismatch", lambda f: ["evaluate.py", "--ckpt", f["good"], "--tasks", "ppl", "--val-data", f["d"] / "data_gpt2", "--out", f["d"] / "r"], "tokenizer mismatch"),
    ("sample-missing-ckpt", lambda f: ["sample.py", "--ckpt", f["d"] / "nope.pt", "--prompt", "a"], "does not exist"),
    ("export-bytes-with-gpt2-tokenizer", lambda f: ["export_hf.py", "--ckpt", f["good"], "--out", f["d"] / "hf", "--tokenizer_dir", SHARED / "tokenizer/gpt2"], "byte-level"),
    ("flops-zero-chinchilla", lambda f: ["flops.py", "--family", "tiny", "--chinchilla", "0"], "chinchilla"),
    ("flops-unknown-family", lambda f: ["flops.py", "--family", "huge"], "unknown family"),
]


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_gives_one_clear_line(fx, case):
    name, argv, words, *env = case
    before = fx["good"].read_bytes()
    proc = run_script(*argv(fx), env={**os.environ, **(env[0] if env else {})}, timeout=300)
    assert_user_error(proc, words)
    assert fx["good"].read_bytes() == before  # good output is never overwritten


def test_table_is_large_enough():
    assert len(BAD_INPUTS) >= 25
