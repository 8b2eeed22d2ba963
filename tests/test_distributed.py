"""torchrun on CPU with gloo: DDP and FSDP2 give the 1-process losses; checkpoints move across world sizes."""
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

import checkpoint
from conftest import ROOT, mean_loss_gradient
from model import get_config
from train import Trainer, parse_args

GLOBAL_BATCH = 8


def train(data, out, nproc, *extra, timeout=600, status=0):
    # --lr 3e-3, not the family's 1.6e-2: at a high LR, AdamW turns the ranks' different rounding of
    # near-zero gradients into lr-sized differences, beyond the tolerances below
    common = ["train.py", "--size", "20k", "--data", str(data), "--out", str(out), "--max_iters", "6",
              "--seq_len", "64", "--eval_tokens", "2048", "--batch_size", str(GLOBAL_BATCH // nproc), "--lr", "3e-3",
              *map(str, extra)]
    cmd = [sys.executable, *common] if nproc == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *common]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "DIST_TIMEOUT_MIN": "2"})
    # the whole torchrun job exits 0: no rank may abort at exit after finishing (train.py's main)
    # a rank that exits non-zero (a stopped stage: 3) makes torchrun exit 1, naming the rank's status
    assert proc.returncode == (status if nproc == 1 or not status else 1), proc.stdout[-3000:] + proc.stderr[-3000:]
    assert not status or nproc == 1 or f"exitcode  : {status}" in proc.stderr, proc.stderr[-3000:]
    return checkpoint.load(out / "ckpt.pt")


def losses(ck):
    return torch.tensor([r["loss"] for r in ck["train"]["history"] if "loss" in r])


@pytest.fixture(scope="module")
def reference(byte_data, tmp_path_factory):
    return train(byte_data, tmp_path_factory.mktemp("ref"), 1)


def assert_same_run(ck, ref):
    assert torch.allclose(losses(ck), losses(ref), rtol=1e-5, atol=0), (losses(ck), losses(ref))
    for k, v in ref["model"].items():
        # attention key biases get a zero gradient that rounding turns into lr-sized AdamW noise
        atol = 1e-3 if k.endswith("qkv.bias") else 1e-5
        assert torch.allclose(ck["model"][k], v, atol=atol), k


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_ranks_match_one(byte_data, tmp_path, reference, mode):
    ck = train(byte_data, tmp_path, 2, "--fsdp", "on" if mode == "fsdp" else "off")
    assert_same_run(ck, reference)


@pytest.mark.slow
def test_llama_member_under_fsdp_matches_one_rank(byte_data, tmp_path):
    """A Llama member (RMSNorm, SwiGLU, RoPE, grouped-query attention) sharded over two ranks."""
    ref = train(byte_data, tmp_path / "one", 1, "--size", "llama-20k")  # the last --size counts
    assert ref["config"] == get_config("llama-20k")
    assert_same_run(train(byte_data, tmp_path / "two", 2, "--size", "llama-20k", "--fsdp", "on"), ref)


def test_fsdp_checkpoint_resumes_on_one_and_two_ranks(byte_data, tmp_path, reference):
    """FSDP writes a sharded folder (no gather); it resumes bit for bit on 1 process, on 2 under DDP
    and on 2 under FSDP, and one process reads it whole (checkpoint.load, expand.py)."""
    train(byte_data, tmp_path / "two", 2, "--fsdp", "on", "--stop_at", 3, status=3)  # 3: stopped early
    sharded = tmp_path / "two" / "ckpt.pt"
    assert sharded.is_dir() and len(list(sharded.glob("*.distcp"))) == 2
    saved = checkpoint.load(sharded)
    assert saved["train"]["step"] == 3 and not saved["train"]["done"]
    assert set(saved["model"]) == set(reference["model"]) and set(saved["optimizer"]["state"]) == \
        set(reference["optimizer"]["state"])
    weights_only = checkpoint.load_sharded(sharded, optimizer=False)
    assert weights_only["optimizer"] is None and all(torch.equal(weights_only["model"][k], v)
                                                     for k, v in saved["model"].items())
    for nproc, extra in ((1, ()), (2, ("--fsdp", "off")), (2, ("--fsdp", "on"))):
        out = tmp_path / f"resume{nproc}{''.join(extra)}"
        out.mkdir()
        shutil.copytree(sharded, out / "ckpt.pt")
        assert_same_run(train(byte_data, out, nproc, "--resume", *extra), reference)
    grown = tmp_path / "grown.pt"
    r = subprocess.run([sys.executable, "expand.py", "--src", str(sharded), "--size", "50k", "--out", str(grown),
                        "--allow_unfinished"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert checkpoint.load(grown)["config"] == get_config("50k")


def test_dead_rank_fails_loudly(byte_data, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py",
           "--size", "20k", "--data", str(byte_data), "--out", str(tmp_path), "--max_iters", "100000",
           "--batch_size", "4", "--seq_len", "64", "--eval_tokens", "2048", "--log_interval", "1"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "DIST_TIMEOUT_MIN": "1"})
    for line in proc.stdout:  # wait until training runs, then kill one worker
        if "| loss" in line:
            break
    workers = subprocess.run(["pgrep", "-f", f"train.py.*{tmp_path}"], capture_output=True, text=True)
    pids = [int(p) for p in workers.stdout.split() if int(p) != proc.pid]
    os.kill(max(pids), signal.SIGKILL)
    t0 = time.time()
    proc.communicate(timeout=180)
    assert proc.returncode != 0 and time.time() - t0 < 180


@pytest.mark.parametrize("fsdp", ["off", "on"])
def test_gradient_accumulation_syncs_once_and_matches(byte_data, tmp_path, fsdp):
    """2 ranks x 2 micro-steps give the 1-process run; and the first step's gradient norm (clipping
    off) is that of the mean loss over the two global micro-batches, computed here: a 1-process
    comparison alone would pass a gradient scaled the same wrong way in both (Adam hides the scale)."""
    accum = ("--grad_accum", 2, "--grad_clip", 0, "--log_interval", 1)
    ref = train(byte_data, tmp_path / "one", 1, *accum)
    two = train(byte_data, tmp_path / "two", 2, *accum, "--fsdp", fsdp)
    assert_same_run(two, ref)
    init = Trainer(parse_args(["--size", "20k", "--data", str(byte_data), "--out", str(tmp_path / "init"),
                               "--max_iters", "6", "--seq_len", "64", "--batch_size", str(GLOBAL_BATCH)]))
    grads = mean_loss_gradient(init.model_cfg, init.model.state_dict(), init.train_tokens, 64, GLOBAL_BATCH,
                               init.cfg.seed, 0, 2)
    want = torch.cat([g.flatten() for g in grads.values()]).norm().item()
    first = next(r for r in two["train"]["history"] if "grad_norm" in r)
    assert first["step"] == 1 and first["grad_norm"] == pytest.approx(want, rel=1e-5)
