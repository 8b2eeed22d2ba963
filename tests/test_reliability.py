"""Faults and mistakes: runs killed at random moments resume bit for bit, checkpoints are never
half-written nor code-carrying, and every user mistake gets one clear line (exit 2)."""
import argparse
import errno
import fcntl
import io
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import struct
import sys
import time
import zipfile

import pytest
import torch

import checkpoint
from conftest import ROOT, SHARED, assert_user_error, run_script
from model import GPT, PRESETS
from util import UserError, atomic_write

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


@pytest.mark.parametrize("sig, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)],
                         ids=["SIGINT", "SIGTERM", "SIGHUP"])
def test_a_stop_signal_writes_a_checkpoint_and_says_how_to_resume(byte_data, tmp_path, sig, status):
    """SIGINT (Ctrl-C), SIGTERM or SIGHUP ends the step, writes a checkpoint (none was due), exits
    128 + the signal as shells report it (a launcher such as run_family.sh stops too: the stage is
    not finished, and the checkpoint says so) and names that checkpoint; --resume continues from it."""
    run = ["--max_iters", 100_000, "--ckpt_interval", 100_000, "--log_interval", 1]
    proc = subprocess.Popen(train_cmd(byte_data, tmp_path, *run), cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    for line in proc.stdout:
        if "| loss" in line:
            break
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == status, err
    saved = checkpoint.load(tmp_path / "ckpt.pt")["train"]
    step = saved["step"]
    assert 0 < step < 100_000 and not saved["done"]
    assert f"the last checkpoint is {tmp_path / 'ckpt.pt'} (step {step}/100000); the same command with " \
           "--resume continues from it" in err, err
    resumed = subprocess.run(train_cmd(byte_data, tmp_path, *run, "--resume", "--stop_at", step + 1), cwd=ROOT,
                             capture_output=True, text=True)
    assert resumed.returncode == 3 and f"resumed {tmp_path / 'ckpt.pt'} at step {step}/" in resumed.stdout


def test_a_grown_checkpoint_follows_its_source(byte_data, tmp_path, capsys):
    """expand.py refuses a stage that was stopped before its end (unless --allow_unfinished), records
    its source's identity, and with --reuse (run_family.sh) keeps a grown checkpoint only while its
    source and settings are unchanged: a source trained on is grown again."""
    import expand
    from train import Trainer, parse_args
    run = ["--size", "20k", "--data", str(byte_data), "--batch_size", "4", "--seq_len", "64", "--eval_tokens",
           "1024", "--max_iters", "4", "--out", str(tmp_path / "a")]
    Trainer(parse_args([*run, "--stop_at", "2"])).run()
    src, grown = tmp_path / "a" / "ckpt.pt", tmp_path / "grown.pt"
    grow = ["--src", str(src), "--size", "50k", "--out", str(grown), "--reuse"]
    with pytest.raises(UserError, match=r"unfinished stage \(step 2/4, stopped early\).*--allow_unfinished"):
        expand.main(grow)
    expand.main([*grow, "--allow_unfinished"])
    early = checkpoint.load(grown)
    Trainer(parse_args([*run, "--resume"])).run()  # the stage finishes: its checkpoint changes
    capsys.readouterr()
    expand.main(grow)
    assert f"wrote {grown}" in capsys.readouterr().out
    regrown = checkpoint.load(grown)
    assert regrown["meta"]["expansion"]["source_id"] == checkpoint.identity(src) != \
        early["meta"]["expansion"]["source_id"]
    assert not torch.equal(regrown["model"]["wte.weight"], early["model"]["wte.weight"])
    written = grown.stat().st_mtime_ns
    expand.main(grow)
    assert capsys.readouterr().out.startswith(f"kept {grown}") and grown.stat().st_mtime_ns == written
    expand.main([*grow, "--seed", "1"])  # other settings: grown again
    assert f"wrote {grown}" in capsys.readouterr().out and checkpoint.load(grown)["meta"]["expansion"]["seed"] == 1


def test_checkpoint_with_pickled_code_is_refused(tmp_path):
    # any non-tensor object stands for a payload whose unpickling would run code
    torch.save({"format": checkpoint.FORMAT, "obj": argparse.Namespace(payload="code")}, tmp_path / "evil.pt")
    with pytest.raises(checkpoint.CheckpointError, match="pickled"):
        checkpoint.load(tmp_path / "evil.pt")


def overwrite_middle(path, tensor: torch.Tensor):
    """Overwrite 16 bytes in the middle of `tensor`'s bytes inside the file at `path` with finite
    floats (1.0), as a bad disk or a stray write would, keeping the zip readable."""
    raw = bytearray(path.read_bytes())
    data = tensor.numpy().tobytes()
    at = raw.find(data)
    assert at >= 0 and raw.find(data, at + 1) < 0  # the tensor's bytes, found once
    mid = at + len(data) // 2 // 4 * 4
    raw[mid:mid + 16] = torch.ones(4).numpy().tobytes()
    path.write_bytes(bytes(raw))


def small_checkpoint(tmp_path, name="ckpt.pt"):
    torch.manual_seed(0)
    ck = checkpoint.make_checkpoint(GPT(PRESETS["20k"]))
    checkpoint.save(tmp_path / name, ck)
    return ck


@pytest.mark.fast
def test_overwritten_tensor_bytes_are_caught_by_their_checksum(tmp_path):
    ck = small_checkpoint(tmp_path)
    name = max(ck["model"], key=lambda k: ck["model"][k].numel())
    overwrite_middle(tmp_path / "ckpt.pt", ck["model"][name])
    with pytest.raises(checkpoint.CheckpointError, match=f"corrupt: tensor model.{name} does not match"):
        checkpoint.load(tmp_path / "ckpt.pt")
    with pytest.raises(checkpoint.CheckpointError, match="corrupt"):
        checkpoint.load(tmp_path / "ckpt.pt", mmap=True)  # mapped tensors are checked too
    meta_only = checkpoint.load(tmp_path / "ckpt.pt", mmap=True, verify=False)  # config/meta reads skip it
    assert meta_only["config"] == PRESETS["20k"] and "checksums" not in meta_only


@pytest.mark.fast
def test_a_changed_byte_in_the_pickled_part_is_caught(tmp_path):
    """The config, progress and history are pickled, not checksummed per tensor: their zip record's
    CRC is checked instead (torch.load checks none). A file of another kind is one line too."""
    small_checkpoint(tmp_path)
    path = tmp_path / "ckpt.pt"
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        pkl = next(i for i in z.infolist() if i.filename.endswith("/data.pkl"))
    name_len, extra_len = struct.unpack("<HH", raw[pkl.header_offset + 26:pkl.header_offset + 30])
    raw[pkl.header_offset + 30 + name_len + extra_len + pkl.compress_size // 2] ^= 0x5A
    path.write_bytes(raw)
    with pytest.raises(checkpoint.CheckpointError, match="corrupt or truncated .Bad CRC-32"):
        checkpoint.load(path, verify=False)
    path.write_text("not a checkpoint\n")
    with pytest.raises(checkpoint.CheckpointError, match="corrupt or truncated"):
        checkpoint.load(path)


def test_nan_weights_are_refused_at_load(tmp_path):
    model = GPT(PRESETS["20k"])
    name, w = next(iter(model.state_dict().items()))
    w.view(-1)[3] = float("inf")
    checkpoint.save(tmp_path / "inf.pt", checkpoint.make_checkpoint(model))  # checksums are right
    with pytest.raises(checkpoint.CheckpointError, match=f"NaN or Inf in weight {name}"):
        checkpoint.load(tmp_path / "inf.pt")


def test_version_1_checkpoint_without_checksums_still_loads(tmp_path):
    model = GPT(PRESETS["20k"])
    old = {**checkpoint.make_checkpoint(model), "version": 1}
    torch.save(old, tmp_path / "v1.pt")  # what save() wrote before checksums
    ck = checkpoint.load(tmp_path / "v1.pt")
    assert ck["version"] == 1 and all(torch.equal(ck["model"][k], v) for k, v in model.state_dict().items())
    small_checkpoint(tmp_path, "v2.pt")
    raw = torch.load(tmp_path / "v2.pt", weights_only=True)  # what save() writes now
    assert raw["version"] == 2 and set(raw["checksums"]) == {n for n, _ in checkpoint.tensors(raw)}


def test_truncated_checkpoint_says_what_else_exists(tmp_path):
    small_checkpoint(tmp_path)
    raw = (tmp_path / "ckpt.pt").read_bytes()
    (tmp_path / "ckpt.pt").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(checkpoint.CheckpointError, match="no other checkpoint is in .*re-run the stage"):
        checkpoint.load(tmp_path / "ckpt.pt")
    small_checkpoint(tmp_path, "ckpt_20k.pt")
    with pytest.raises(checkpoint.CheckpointError, match="other checkpoints beside it: ckpt_20k.pt;"):
        checkpoint.load(tmp_path / "ckpt.pt")


class FullDisk(io.RawIOBase):
    """A file that takes `room` bytes, then fails as a full disk does."""
    def __init__(self, f, room):
        self.f, self.room = f, room

    def writable(self):
        return True

    def write(self, b):
        if len(b) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(b)
        return self.f.write(b)


@pytest.mark.parametrize("how", ["oserror", "torch.save"])
def test_full_disk_says_no_space_left(tmp_path, how):
    def write(f):
        if how == "oserror":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        torch.save({"w": torch.zeros(10_000)}, FullDisk(f, 1000))  # RuntimeError 'unexpected pos'

    (tmp_path / "ckpt.pt").write_bytes(b"previous")
    with pytest.raises(UserError, match=r"no space left on the device of .* MB free\); free space or "
                                        r"choose another --out; the previous file, if any, is intact"):
        atomic_write(tmp_path / "ckpt.pt", write)
    assert (tmp_path / "ckpt.pt").read_bytes() == b"previous" and len(list(tmp_path.iterdir())) == 1


@pytest.mark.parametrize("free", [0, 10**12])
def test_torch_write_error_without_an_oserror_checks_the_free_space(tmp_path, monkeypatch, free):
    """A RuntimeError that carries no OSError: a full disk only when no room is left."""
    def write(f):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr("util.shutil.disk_usage", lambda p: shutil._ntuple_diskusage(10**12, 10**12 - free, free))
    with pytest.raises(UserError) as e:
        atomic_write(tmp_path / "ckpt.pt", write)
    assert ("no space left" in str(e.value)) == (free == 0)
    assert ("unexpected pos 704 vs 598); the previous file" in str(e.value)) == (free > 0)
    assert not list(tmp_path.iterdir())


def test_write_error_mid_save_keeps_the_previous_checkpoint(byte_data, tmp_path):
    good = subprocess.run(train_cmd(byte_data, tmp_path, "--max_iters", 4, "--stop_at", 2), cwd=ROOT)
    assert good.returncode == 3  # stopped before the end of the stage
    size = (tmp_path / "ckpt.pt").stat().st_size

    def small_files():  # the next checkpoint cannot be written whole: EFBIG, as on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (size // 2, size // 2))

    proc = subprocess.run(train_cmd(byte_data, tmp_path, "--max_iters", 4, "--resume"), cwd=ROOT,
                          capture_output=True, text=True, preexec_fn=small_files)
    assert_user_error(proc, "writing", "intact")
    assert checkpoint.load(tmp_path / "ckpt.pt")["train"]["step"] == 2
    assert not list(tmp_path.glob(".ckpt.pt.*"))  # no temp file left behind


def test_prepare_on_a_full_disk_says_so_and_leaves_no_temp_file(tmp_path):
    """A token file that cannot be written whole (EFBIG here, ENOSPC on a full disk): one line, and
    neither temp file nor token file is left behind."""
    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))

    proc = run_script("data/prepare.py", "--dataset", SHARED / "data/corpus/fineweb_edu_sample150.jsonl",
                      "--tokenizer", "bytes", "--out", tmp_path / "o", "--workers", 1, preexec_fn=small_files)
    assert_user_error(proc, f"writing {tmp_path / 'o' / 'train.bin'} failed")
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [".lock"]


def test_overwrite_starts_the_run_over_and_its_metrics_with_it(byte_data, tmp_path):
    from train import Trainer, parse_args
    run = ["--size", "20k", "--data", str(byte_data), "--batch_size", "4", "--seq_len", "64", "--eval_tokens",
           "1024", "--out", str(tmp_path)]
    Trainer(parse_args([*run, "--max_iters", "6"])).run()
    with pytest.raises(UserError, match="holds the checkpoint of an earlier run"):
        Trainer(parse_args([*run, "--max_iters", "2"]))
    Trainer(parse_args([*run, "--max_iters", "2", "--overwrite"])).run()
    ck = checkpoint.load(tmp_path / "ckpt.pt")
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert ck["train"]["max_iters"] == 2 and rows == json.loads(json.dumps(ck["train"]["history"]))


def test_evaluate_a_member_with_no_training_curve(fx, tmp_path):
    """A grown member not trained yet has no evaluation in its history (nor has a stage stopped
    before its first): the report is written, its plot without a curve."""
    from expand import expand
    grown = tmp_path / "grown.pt"
    checkpoint.save(grown, expand(checkpoint.load(fx["good"]), PRESETS["50k"]))
    proc = run_script("evaluate.py", "--ckpt", grown, "--tasks", "ppl", "--val_data", fx["data"], "--val_tokens",
                      2048, "--out", tmp_path / "r")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "r" / "report.md").is_file()


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
    (d / "overwritten.pt").write_bytes(raw)
    overwrite_middle(d / "overwritten.pt", checkpoint.load(good)["model"]["head.weight"])
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
    (d / "not_a_plan.json").write_text('{"progressive": [1, 2]}')
    (d / "text.pt").write_text("not a checkpoint\n")
    torch.save({"format": checkpoint.FORMAT, "version": checkpoint.VERSION, "config": PRESETS["20k"].to_dict()},
               d / "no_model.pt")
    (d / "latin1.txt").write_bytes("caf\u00e9 au lait\n".encode("latin-1"))
    for name, record in {"int": '{"text": 123}', "null": '{"text": null}', "surrogate": '{"text": "a\\ud800b"}'}.items():
        (d / f"text_{name}.jsonl").write_text('{"text": "fine"}\n' + record + "\n")
    arc = (SHARED / "data/eval/arc_easy_test.jsonl").read_text().splitlines()[:3]
    for name, lines in {"truncated": arc[:2] + [arc[2][:40]], "keyless": ['{"question": "?"}'] * 3}.items():
        (d / f"eval_{name}").mkdir()
        (d / f"eval_{name}" / "arc_easy_test.jsonl").write_text("\n".join(lines) + "\n")
    shutil.copytree(byte_data, d / "data_edited")  # a token changed in place under the same meta.json
    with open(d / "data_edited" / "train.bin", "r+b") as f:
        f.seek(1000)
        byte = f.read(1)[0]
        f.seek(1000)
        f.write(bytes([byte ^ 1]))
    (d / "data_keyless").mkdir()
    (d / "data_keyless" / "meta.json").write_text('{"tokenizer": "bytes"}')
    shutil.copytree(byte_data, d / "data_short16")  # GPT-2 tokens (uint16), train.bin one byte short
    meta = json.loads((byte_data / "meta.json").read_text())
    n = meta["train_tokens"] // 2
    (d / "data_short16" / "meta.json").write_text(json.dumps({**meta, "tokenizer": "gpt2", "vocab_size": 50257,
                                                              "dtype": "uint16", "train_tokens": n}))
    with open(d / "data_short16" / "train.bin", "r+b") as f:
        f.truncate(2 * n - 1)
    hf_folders(d)
    stopped = subprocess.run(train_cmd(byte_data, d / "stopped", "--max_iters", 4, "--stop_at", 2), cwd=ROOT)
    assert stopped.returncode == 3
    (d / "locked").mkdir()
    lock = open(d / "locked" / "ckpt.pt.lock", "w")  # as a running train.py holds it, for the module
    fcntl.flock(lock, fcntl.LOCK_EX)
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return {"d": d, "good": good, "data": byte_data, "stopped": d / "stopped" / "ckpt.pt", "lock": lock}


def hf_folders(d):
    """A small transformers GPT-2 folder, one with its safetensors cut in half, one with a broken config."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=256, n_positions=64,
                                  bos_token_id=255, eos_token_id=255)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(d / "hf_ok")
    shutil.copytree(d / "hf_ok", d / "hf_truncated")
    weights = (d / "hf_ok" / "model.safetensors").read_bytes()
    (d / "hf_truncated" / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    shutil.copytree(d / "hf_ok", d / "hf_bad_config")
    (d / "hf_bad_config" / "config.json").write_text('{"model_type": "gpt2", "n_layer": ')


def t(*a):
    return ["train.py", "--size", "20k", "--max_iters", "2", "--eval_tokens", "1024", *a]


# (id, argv as a function of the fixtures, words the error line must contain..., [extra env])
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
    ("train-seed-too-large", lambda f: t("--data", f["data"], "--seed", str(2**64)), "out of range"),
    ("train-seed-negative", lambda f: t("--data", f["data"], "--seed", "-1"), "out of range"),
    ("train-no-gpu", lambda f: t("--data", f["data"], "--device", "cuda"), "no CUDA"),
    ("train-bad-torchrun-env", lambda f: t("--data", f["data"]), "torchrun", {"RANK": "x", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}),
    ("expand-same-size", lambda f: ["expand.py", "--src", f["good"], "--size", "20k", "--out", f["d"] / "e.pt"], "equals"),
    ("expand-shrink", lambda f: ["expand.py", "--src", f["d"] / "50k.pt", "--size", "20k", "--out", f["d"] / "e.pt"], "shrink"),
    ("expand-other-family", lambda f: ["expand.py", "--src", f["good"], "--size", "1b", "--out", f["d"] / "e.pt"], "across families"),
    ("expand-unknown-method", lambda f: ["expand.py", "--src", f["good"], "--size", "50k", "--method", "magic", "--out", f["d"] / "e.pt"], "unknown method"),
    ("expand-seed-too-large", lambda f: ["expand.py", "--src", f["good"], "--size", "50k", "--seed", str(2**64), "--out", f["d"] / "e.pt"], "out of range"),
    ("expand-overwritten-tensor", lambda f: ["expand.py", "--src", f["d"] / "overwritten.pt", "--size", "50k", "--out", f["d"] / "e.pt"], "does not match its checksum"),
    ("sample-overwritten-tensor", lambda f: ["sample.py", "--ckpt", f["d"] / "overwritten.pt"], "does not match its checksum"),
    ("expand-foreign", lambda f: ["expand.py", "--src", f["d"] / "foreign.pt", "--size", "50k", "--out", f["d"] / "e.pt"], "not a checkpoint"),
    ("evaluate-missing-ckpt", lambda f: ["evaluate.py", "--ckpt", f["d"] / "nope.pt", "--tasks", "ppl", "--val-data", f["data"], "--out", f["d"] / "r"], "does not exist"),
    ("evaluate-unknown-task", lambda f: ["evaluate.py", "--ckpt", f["good"], "--tasks", "mmlu", "--out", f["d"] / "r"], "unknown task"),
    ("evaluate-data-mismatch", lambda f: ["evaluate.py", "--ckpt", f["good"], "--tasks", "ppl", "--val-data", f["d"] / "data_gpt2", "--out", f["d"] / "r"], "tokenizer mismatch"),
    ("sample-missing-ckpt", lambda f: ["sample.py", "--ckpt", f["d"] / "nope.pt", "--prompt", "a"], "does not exist"),
    ("export-bytes-with-gpt2-tokenizer", lambda f: ["export_hf.py", "--ckpt", f["good"], "--out", f["d"] / "hf", "--tokenizer_dir", SHARED / "tokenizer/gpt2"], "byte-level"),
    ("flops-zero-chinchilla", lambda f: ["flops.py", "--family", "tiny", "--chinchilla", "0"], "chinchilla"),
    ("flops-unknown-family", lambda f: ["flops.py", "--family", "huge"], "unknown family"),
    # a stopped stage, and runs that would overwrite one another
    ("expand-unfinished-stage", lambda f: ["expand.py", "--src", f["stopped"], "--size", "50k", "--out", f["d"] / "e.pt"], "unfinished stage (step 2/4"),
    ("train-rerun-without-resume", lambda f: t("--data", f["data"], "--out", f["d"] / "run"), "--resume", "--overwrite"),
    ("train-init-is-ckpt", lambda f: t("--data", f["data"], "--init", f["good"], "--ckpt", f["good"], "--out", f["d"] / "x"), "same file"),
    ("train-ckpt-locked", lambda f: t("--data", f["data"], "--out", f["d"] / "locked"), f"another train.py (PID {os.getpid()})"),
    ("export-import-over-ckpt", lambda f: ["export_hf.py", "--import", "gpt2", "--out", f["good"]], "--overwrite"),
    # numeric flags: finite, in range, consistent
    ("train-grad-clip-negative", lambda f: t("--data", f["data"], "--grad_clip", "-1"), "--grad_clip -1.0", "[0, inf)"),
    ("train-min-lr-above-lr", lambda f: t("--data", f["data"], "--min_lr", "1", "--lr", "1e-3"), "--min_lr 1.0", "[0, 0.001]"),
    ("train-decay-frac-2", lambda f: t("--data", f["data"], "--schedule", "wsd", "--decay_frac", "2"), "--decay_frac", "[0, 1]"),
    ("train-weight-decay-negative", lambda f: t("--data", f["data"], "--weight_decay", "-1"), "--weight_decay"),
    ("train-lr-nan", lambda f: t("--data", f["data"], "--lr", "nan"), "--lr nan"),
    ("train-beta1-1.5", lambda f: t("--data", f["data"], "--beta1", "1.5"), "--beta1", "[0, 1)"),
    ("train-beta2-nan", lambda f: t("--data", f["data"], "--beta2", "nan"), "--beta2 nan"),
    ("train-tokens-inf", lambda f: ["train.py", "--size", "20k", "--data", f["data"], "--tokens", "inf"], "--tokens inf"),
    ("train-warmup-negative", lambda f: t("--data", f["data"], "--warmup", "-5"), "--warmup -5"),
    ("train-device-tpu", lambda f: t("--data", f["data"], "--device", "tpu"), "--device 'tpu'"),
    ("sample-device-tpu", lambda f: ["sample.py", "--ckpt", f["good"], "--device", "tpu"], "--device 'tpu'"),
    ("evaluate-device-tpu", lambda f: ["evaluate.py", "--ckpt", f["good"], "--tasks", "ppl", "--val-data", f["data"], "--out", f["d"] / "r", "--device", "tpu"], "--device 'tpu'"),
    ("sample-temperature-nan", lambda f: ["sample.py", "--ckpt", f["good"], "--temperature", "nan"], "--temperature nan"),
    ("flops-budget-scale-inf", lambda f: ["flops.py", "--family", "tiny", "--budget_scale", "inf"], "--budget_scale inf"),
    ("flops-budget-scale-1e9", lambda f: ["flops.py", "--family", "tiny", "--budget_scale", "1e9"], "more FLOPs than training every member alone"),
    # every file read through a loader that names it and what is wrong
    ("sample-text-file-as-ckpt", lambda f: ["sample.py", "--ckpt", f["d"] / "text.pt"], "text.pt is corrupt"),
    ("sample-ckpt-without-model", lambda f: ["sample.py", "--ckpt", f["d"] / "no_model.pt"], "no weights ('model')"),
    ("prepare-latin1-text", lambda f: ["data/prepare.py", "--dataset", f["d"] / "latin1.txt", "--tokenizer", "bytes", "--out", f["d"] / "o"], "latin1.txt:1 is not utf-8 text", "--encoding"),
    ("prepare-unknown-encoding", lambda f: ["data/prepare.py", "--dataset", f["d"] / "latin1.txt", "--encoding", "klingon", "--out", f["d"] / "o"], "--encoding klingon"),
    ("prepare-jsonl-text-int", lambda f: ["data/prepare.py", "--dataset", f["d"] / "text_int.jsonl", "--tokenizer", "bytes", "--out", f["d"] / "o"], "text_int.jsonl:2: 'text' is int"),
    ("prepare-jsonl-text-null", lambda f: ["data/prepare.py", "--dataset", f["d"] / "text_null.jsonl", "--tokenizer", "bytes", "--out", f["d"] / "o"], "text_null.jsonl:2: 'text' is NoneType"),
    ("prepare-jsonl-lone-surrogate", lambda f: ["data/prepare.py", "--dataset", f["d"] / "text_surrogate.jsonl", "--tokenizer", "bytes", "--out", f["d"] / "o"], "text_surrogate.jsonl:2", "lone surrogate"),
    ("train-data-edited-in-place", lambda f: t("--data", f["d"] / "data_edited"), "does not match its SHA-256"),
    ("train-meta-without-keys", lambda f: t("--data", f["d"] / "data_keyless"), "lacks vocab_size"),
    ("train-gpt2-bin-one-byte-short", lambda f: t("--data", f["d"] / "data_short16"), "truncated or changed"),
    ("evaluate-truncated-task-file", lambda f: ["evaluate.py", "--ckpt", f["good"], "--tasks", "arc_easy", "--data_dir", f["d"] / "eval_truncated", "--out", f["d"] / "r"], "record 3 is not JSON"),
    ("evaluate-keyless-task-file", lambda f: ["evaluate.py", "--ckpt", f["good"], "--tasks", "arc_easy", "--data_dir", f["d"] / "eval_keyless", "--out", f["d"] / "r"], "record 1 lacks the fields"),
    ("export-import-truncated-safetensors", lambda f: ["export_hf.py", "--import", f["d"] / "hf_truncated", "--out", f["d"] / "i.pt"], "cannot load a transformers GPT-2"),
    ("export-import-bad-config", lambda f: ["export_hf.py", "--import", f["d"] / "hf_bad_config", "--out", f["d"] / "i.pt"], "not a valid JSON"),
    ("evaluate-plan-of-another-kind", lambda f: ["evaluate.py", "--ckpt", f["good"], "--tasks", "ppl", "--val-data", f["data"], "--plan", f["d"] / "not_a_plan.json", "--out", f["d"] / "r"], "not_a_plan.json is not a plan of flops.py"),
    ("run-family-duplicate-seeds", lambda f: ["run_family.sh", "--out", f["d"] / "fam"], "SEEDS lists seed 1 twice", {"SEEDS": "1 01"}),
]


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_gives_one_clear_line(fx, case):
    """One `error:` line, exit 2, and no file that existed before is changed (lock files aside: they
    record who holds them)."""
    name, argv, *words = case
    env = words.pop() if isinstance(words[-1], dict) else {}
    before = files(fx["d"])
    good = fx["good"].read_bytes()
    argv = argv(fx)
    if str(argv[0]).endswith(".sh"):
        proc = subprocess.run(["bash", *map(str, argv)], cwd=ROOT, capture_output=True, text=True, timeout=300,
                              env={**os.environ, **env})
    else:
        proc = run_script(*argv, env={**os.environ, **env}, timeout=300)
    assert_user_error(proc, *words)
    assert fx["good"].read_bytes() == good  # good output is never overwritten
    after = files(fx["d"])
    assert {p: after.get(p) for p in before} == before


def files(folder) -> dict:
    """(size, modification time) of every file under folder but lock files."""
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")
            if p.is_file() and not p.name.endswith("lock")}


def test_table_is_large_enough():
    assert len(BAD_INPUTS) >= 60
