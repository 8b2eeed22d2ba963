import json

import pytest
import torch

import checkpoint
from conftest import assert_user_error, run_script
from flops import train_flops_per_token
from model import PRESETS
from parallel import finish_replace
from train import Trainer, parse_args
from util import UserError


def args(data, out, *extra):
    return parse_args(["--size", "20k", "--data", str(data), "--out", str(out), "--batch_size", "8",
                       "--seq_len", "64", "--eval_tokens", "4096", "--log_interval", "5", *map(str, extra)])


def losses(history):
    return [r["loss"] for r in history if "loss" in r]


@pytest.mark.fast
def test_resume_continues_bit_for_bit(byte_data, tmp_path):
    straight = Trainer(args(byte_data, tmp_path / "a", "--max_iters", 40, "--ckpt_interval", 100))
    straight.run()
    first = Trainer(args(byte_data, tmp_path / "b", "--max_iters", 40, "--ckpt_interval", 100, "--stop_at", 20))
    first.run()
    assert first.step == 20 and not checkpoint.load(tmp_path / "b" / "ckpt.pt")["train"]["done"]
    second = Trainer(args(byte_data, tmp_path / "b", "--max_iters", 40, "--resume"))
    assert second.step == 20
    second.run()
    assert losses(second.history) == losses(straight.history) and len(losses(straight.history)) == 8
    a, b = checkpoint.load(tmp_path / "a" / "ckpt.pt"), checkpoint.load(tmp_path / "b" / "ckpt.pt")
    assert a["train"]["done"] and b["train"]["done"]
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    # the metrics file of the resumed run reads as one uninterrupted run
    rows = [json.loads(line) for line in open(tmp_path / "b" / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [r["step"] for r in straight.history]


def test_val_loss_falls_and_flops_are_counted(byte_data, tmp_path):
    t = Trainer(args(byte_data, tmp_path, "--tokens", 150_000, "--lr", 3e-3))
    t.run()
    vals = [r["val_loss"] for r in t.history if "val_loss" in r]
    assert vals[0] > 5.3 and vals[-1] < 3.6, vals  # from ln(256) = 5.55 to clearly learned
    ck = checkpoint.load(tmp_path / "ckpt.pt")
    assert ck["train"]["tokens"] == t.max_iters * 8 * 64 >= 150_000
    assert ck["train"]["flops"] == ck["train"]["tokens"] * train_flops_per_token(PRESETS["20k"], 64)
    assert ck["meta"]["flops_total"] == ck["train"]["flops"]


def test_init_carries_flops_and_lineage(byte_data, tmp_path):
    """A stage started from a grown checkpoint adds its own FLOPs to its ancestors' and keeps their
    lineage (the members it grew from, oldest first) and the expansion it came from."""
    from expand import expand
    Trainer(args(byte_data, tmp_path / "a", "--max_iters", 4)).run()
    a = checkpoint.load(tmp_path / "a" / "ckpt.pt")
    grown = expand(a, PRESETS["50k"], method="aki")
    grown["meta"]["lineage"] = ["10k", *grown["meta"]["lineage"]]  # as if 20k had been grown from a 10k
    checkpoint.save(tmp_path / "grown.pt", grown)
    t = Trainer(args(byte_data, tmp_path / "b", "--size", "50k", "--max_iters", 4, "--init", tmp_path / "grown.pt"))
    t.run()
    b = checkpoint.load(tmp_path / "b" / "ckpt.pt")
    assert b["meta"]["lineage"] == ["10k", "20k"] and b["meta"]["expansion"]["method"] == "aki"
    assert b["meta"]["flops_total"] == pytest.approx(a["meta"]["flops_total"] +
                                                     4 * 8 * 64 * train_flops_per_token(PRESETS["50k"], 64))
    assert b["meta"]["init"] == str(tmp_path / "grown.pt")


def test_bad_inputs_give_one_clear_line(byte_data, tmp_path):
    base = ["train.py", "--data", byte_data, "--out", tmp_path / "x", "--max_iters", 2, "--eval_tokens", 2048]
    assert_user_error(run_script(*base, "--size", "3b"), "unknown size")
    assert_user_error(run_script("train.py", "--size", "20k", "--data", tmp_path / "none", "--max_iters", 2),
                      "no prepared data")
    ok = run_script(*base, "--size", "20k", "--batch_size", 2, "--seq_len", 32)
    assert ok.returncode == 0, ok.stderr
    assert_user_error(run_script(*base, "--size", "50k", "--init", tmp_path / "x" / "ckpt.pt", "--out", tmp_path / "y"),
                      "expand.py")
    assert_user_error(run_script(*base, "--size", "20k", "--init", tmp_path / "missing.pt", "--out", tmp_path / "y"),
                      "does not exist")
    assert_user_error(run_script("train.py", "--size", "20k", "--data", byte_data), "budget")


def test_each_stage_draws_its_own_batches(byte_data, tmp_path):
    """A grown stage (one with ancestors) does not replay the batches its ancestors trained on;
    a run from scratch keeps the plain (seed, step, micro) key."""
    import numpy as np

    from data import open_split
    from train import get_batch
    tokens, _ = open_split(str(byte_data), "train")
    x0, _ = get_batch(tokens, 64, 8, 1337, 5, 0)
    assert torch.equal(x0, get_batch(tokens, 64, 8, 1337, 5, 0, stage=0)[0])
    ix = np.random.default_rng([1337, 5, 0]).integers(0, len(tokens) - 65, size=8)
    assert torch.equal(x0[:, 0], torch.from_numpy(tokens[ix].astype(np.int64)))
    x1, _ = get_batch(tokens, 64, 8, 1337, 5, 0, stage=1)
    assert not torch.equal(x0, x1) and torch.equal(x1, get_batch(tokens, 64, 8, 1337, 5, 0, stage=1)[0])
    # the stage comes from the --init checkpoint's lineage, and is recorded with the data position
    Trainer(args(byte_data, tmp_path / "a", "--max_iters", 2)).run()
    ck = checkpoint.load(tmp_path / "a" / "ckpt.pt")
    assert ck["train"]["data_position"]["stage"] == 0
    grown_meta = {**ck["meta"], "lineage": ["10k"]}  # as if it had been grown from a 10k member
    checkpoint.save(tmp_path / "grown.pt", checkpoint.pack(ck["config"], ck["model"], None, None, grown_meta))
    t = Trainer(args(byte_data, tmp_path / "b", "--max_iters", 2, "--init", tmp_path / "grown.pt"))
    assert t.stage == 1
    t.run()
    assert checkpoint.load(tmp_path / "b" / "ckpt.pt")["train"]["data_position"]["stage"] == 1


def test_stable_ckpt_is_the_state_where_the_decay_starts(byte_data, tmp_path):
    """WSD --stable_ckpt: the weights of a run stopped where the decay starts; it counts the whole
    stage's FLOPs, since the member still finishes its decay and the family pays for it."""
    wsd = ("--max_iters", 20, "--schedule", "wsd", "--ckpt_interval", 100)
    full = Trainer(args(byte_data, tmp_path / "a", *wsd, "--stable_ckpt", tmp_path / "stable.pt"))
    full.run()
    Trainer(args(byte_data, tmp_path / "b", *wsd, "--stop_at", 16)).run()
    stable, stopped = checkpoint.load(tmp_path / "stable.pt"), checkpoint.load(tmp_path / "b" / "ckpt.pt")
    assert full.stable_step == 16 and stable["train"]["step"] == 16 and not stable["train"]["done"]
    for k in stable["model"]:
        assert torch.equal(stable["model"][k], stopped["model"][k]), k
    assert stable["meta"]["flops_total"] == pytest.approx(full.flops_total)
    assert stable["meta"]["stable_phase_end"] == {"step": 16, "of": 20}
    with pytest.raises(UserError, match="need --schedule wsd"):
        args(byte_data, tmp_path / "c", "--max_iters", 20, "--stable_ckpt", tmp_path / "x.pt")
    (tmp_path / "stable.pt").unlink()  # a finished stage whose stable checkpoint was removed
    with pytest.raises(UserError, match="missing"):
        Trainer(args(byte_data, tmp_path / "a", *wsd, "--stable_ckpt", tmp_path / "stable.pt", "--resume")).run()


def test_a_grown_stage_checks_that_its_copies_learned_apart(byte_data, tmp_path):
    """train.py ends a grown stage with the twin check: a warning when copies are still equal to
    their source (the equal split of FPI), one confirming line when none is."""
    from expand import expand
    Trainer(args(byte_data, tmp_path / "a", "--max_iters", 4)).run()
    src = checkpoint.load(tmp_path / "a" / "ckpt.pt")
    for noise, want in ((0.0, "warning: copied units are still exact twins"), (0.1, "growth check: all 178 copied")):
        grown = tmp_path / f"grown_{noise}.pt"
        checkpoint.save(grown, expand(src, PRESETS["50k"], method="fpi", noise=noise))
        out = tmp_path / f"b_{noise}"
        t = Trainer(parse_args(["--size", "50k", "--data", str(byte_data), "--out", str(out), "--batch_size", "8",
                                "--seq_len", "64", "--eval_tokens", "4096", "--max_iters", "4", "--init", str(grown)]))
        t.run()
        log = (out / "train.log").read_text()
        assert want in log, log[-2000:]
        assert ("warning" in log) == (noise == 0)


def test_resume_knows_its_init_and_data_by_content_not_by_spelling(byte_data, tmp_path, monkeypatch):
    """The same --init and --data spelled relative instead of absolute, or moved along with the run
    folder, resume; another checkpoint or other data in their place is refused."""
    import shutil
    from pathlib import Path
    Trainer(args(byte_data, tmp_path / "run" / "a", "--max_iters", 2)).run()
    shutil.copytree(byte_data, tmp_path / "run" / "data")

    def stage(root, *extra):
        return args(root / "data", root / "b", "--max_iters", 6, "--ckpt_interval", 100,
                    "--init", root / "a" / "ckpt.pt", *extra)

    Trainer(stage(tmp_path / "run", "--stop_at", 3)).run()
    monkeypatch.chdir(tmp_path)
    assert Trainer(stage(Path("run"), "--resume")).step == 3
    shutil.move(tmp_path / "run", tmp_path / "moved")
    moved = Trainer(stage(Path("moved"), "--resume"))
    assert moved.step == 3
    moved.run()
    assert checkpoint.load(tmp_path / "moved" / "b" / "ckpt.pt")["train"]["done"]

    init, meta = tmp_path / "moved" / "a" / "ckpt.pt", tmp_path / "moved" / "data" / "meta.json"
    original = init.read_bytes()
    Trainer(args(byte_data, tmp_path / "other", "--max_iters", 2, "--seed", 1)).run()
    shutil.copy(tmp_path / "other" / "ckpt.pt", init)
    with pytest.raises(UserError, match="--init changed since"):
        Trainer(stage(Path("moved"), "--resume"))
    init.write_bytes(original)
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "fingerprint": "other text"}))
    with pytest.raises(UserError, match="--data changed since"):
        Trainer(stage(Path("moved"), "--resume"))


def test_ctrl_c_says_where_the_last_checkpoint_is(byte_data, tmp_path, monkeypatch, capsys):
    """A KeyboardInterrupt in the middle of a step (a second Ctrl-C) ends with exit status 130 and
    names the checkpoint to resume from, or says that none was written."""
    import train
    train_step = train.Trainer.train_step

    def interrupted_at_step_3(self):
        if self.step == 3:
            raise KeyboardInterrupt
        return train_step(self)

    monkeypatch.setattr(train.Trainer, "train_step", interrupted_at_step_3)
    argv = ["--size", "20k", "--data", str(byte_data), "--batch_size", "8", "--seq_len", "64",
            "--eval_tokens", "4096", "--max_iters", "10"]
    for out, interval, want in (("a", 2, f"the last checkpoint is {tmp_path / 'a' / 'ckpt.pt'} (step 2/10); "
                                             "the same command with --resume continues"),
                                ("b", 5, "no checkpoint was written yet")):
        with pytest.raises(SystemExit) as stop:
            train.main([*argv, "--out", str(tmp_path / out), "--ckpt_interval", str(interval)])
        assert stop.value.code == 130
        assert want in capsys.readouterr().err
    assert checkpoint.load(tmp_path / "a" / "ckpt.pt")["train"]["step"] == 2
    assert not (tmp_path / "b" / "ckpt.pt").exists()


def test_a_save_killed_between_its_renames_leaves_a_checkpoint_to_resume(tmp_path):
    """replace_path renames PATH to PATH.old, then PATH.tmp to PATH: a kill in between leaves no PATH."""
    path = tmp_path / "ckpt.pt"
    (tmp_path / "ckpt.pt.old").write_text("previous")
    (tmp_path / "ckpt.pt.tmp").mkdir()  # a sharded save cut off before its meta file: incomplete
    finish_replace(path)
    assert path.read_text() == "previous"
    path.unlink()
    (tmp_path / "ckpt.pt.old").write_text("previous")
    (tmp_path / "ckpt.pt.tmp" / "meta.pt").write_text("complete")  # complete: the newer one wins
    finish_replace(path)
    assert (path / "meta.pt").read_text() == "complete" and (tmp_path / "ckpt.pt.old").exists()
    finish_replace(path)  # PATH present: nothing to do
    assert path.is_dir()


def test_source_ids_of_a_sharded_init_follow_its_meta_file(tmp_path):
    """--init may be a sharded checkpoint (a folder): its meta file identifies it, without a traceback."""
    from train import source_ids
    folder = tmp_path / "ckpt_20k.pt"
    checkpoint.save(folder / checkpoint.SHARDED_META, {"format": checkpoint.FORMAT, "train": {"step": 1}})
    first = source_ids({"tokenizer": "bytes"}, str(folder))
    assert first == source_ids({"tokenizer": "bytes"}, str(folder)) and first["init"]
    checkpoint.save(folder / checkpoint.SHARDED_META, {"format": checkpoint.FORMAT, "train": {"step": 2}})
    assert source_ids({"tokenizer": "bytes"}, str(folder))["init"] != first["init"]


def _weights(path):
    return checkpoint.load(path)["model"]


def test_a_decay_branch_equals_the_run_planned_to_end_there(byte_data, tmp_path):
    """WSD: one 40-step run with --branches 0.5 keeps the state where a 20-step run starts its decay
    (step 16); --branch_from finishes that 20-step run, and it equals the 20-step run planned alone
    (same warmup steps), weights and losses, bit for bit."""
    wsd = ["--schedule", "wsd", "--warmup", 4, "--eval_interval", 10]
    long = Trainer(args(byte_data, tmp_path / "long", "--max_iters", 40, "--branches", "0.5", *wsd))
    assert long.branch_points == {16: [20]}
    long.run()
    point = tmp_path / "long" / "ckpt_branch20.pt"
    assert checkpoint.load(point)["train"]["step"] == 16
    planned = Trainer(args(byte_data, tmp_path / "planned", "--max_iters", 20, *wsd))
    planned.run()
    branch = Trainer(args(byte_data, tmp_path / "branch", "--max_iters", 20, "--branch_from", point, *wsd))
    assert branch.step == 16
    branch.run()
    assert losses(branch.history) == losses(planned.history)
    a, b = _weights(tmp_path / "planned" / "ckpt.pt"), _weights(tmp_path / "branch" / "ckpt.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the branch's FLOPs are the whole 20 steps, its metrics the whole curve from step 0
    assert branch.flops == planned.flops
    rows = [json.loads(line) for line in open(tmp_path / "branch" / "metrics.jsonl")]
    assert rows[0]["step"] == 0 and rows[-1]["step"] == 20


def test_a_branch_from_a_different_schedule_is_refused(byte_data, tmp_path):
    wsd = ["--schedule", "wsd", "--eval_interval", 10]
    Trainer(args(byte_data, tmp_path / "long", "--max_iters", 20, "--branches", "0.5", "--warmup", 2, *wsd)).run()
    point = tmp_path / "long" / "ckpt_branch10.pt"
    with pytest.raises(UserError, match="LR schedule"):  # another warmup
        Trainer(args(byte_data, tmp_path / "b", "--max_iters", 10, "--branch_from", point, "--warmup", 3, *wsd))
    with pytest.raises(UserError, match="--seed"):
        Trainer(args(byte_data, tmp_path / "c", "--max_iters", 10, "--branch_from", point, "--warmup", 2,
                     "--seed", 7, *wsd))
    with pytest.raises(UserError, match="fractions"):
        parse_args(["--size", "20k", "--data", "d", "--max_iters", "5", "--schedule", "wsd", "--branches", "1.5"])
    with pytest.raises(UserError, match="wsd"):
        parse_args(["--size", "20k", "--data", "d", "--max_iters", "5", "--branches", "0.5"])


def test_llama_member_trains_grows_and_continues(byte_data, tmp_path):
    """The same commands for a Llama member: train llama-20k, grow it with expand.py's CLI (AKI)
    into llama-50k, continue with train.py --init; the growth check finds no twin."""
    Trainer(parse_args(["--size", "llama-20k", "--data", str(byte_data), "--out", str(tmp_path / "a"),
                        "--batch_size", "8", "--seq_len", "64", "--eval_tokens", "4096", "--max_iters", "4"])).run()
    grown = tmp_path / "grown.pt"
    r = run_script("expand.py", "--src", tmp_path / "a" / "ckpt.pt", "--size", "llama-50k", "--out", grown)
    assert r.returncode == 0, r.stderr
    t = Trainer(parse_args(["--size", "llama-50k", "--data", str(byte_data), "--out", str(tmp_path / "b"),
                            "--batch_size", "8", "--seq_len", "64", "--eval_tokens", "4096", "--max_iters", "4",
                            "--init", str(grown)]))
    t.run()
    ck = checkpoint.load(tmp_path / "b" / "ckpt.pt")
    assert ck["meta"]["lineage"] == ["llama-20k"] and ck["config"] == PRESETS["llama-50k"]
    assert "growth check: all" in (tmp_path / "b" / "train.log").read_text()


def test_a_grown_adamw_state_is_loaded_on_a_fresh_start(byte_data, tmp_path):
    """expand.py --optimizer_state: the grown stage starts from the grown moments, not an empty AdamW."""
    from expand import expand
    Trainer(args(byte_data, tmp_path / "a", "--max_iters", 2)).run()
    grown = tmp_path / "grown.pt"
    checkpoint.save(grown, expand(checkpoint.load(tmp_path / "a" / "ckpt.pt"), PRESETS["50k"], optimizer_state=True))
    t = Trainer(parse_args(["--size", "50k", "--data", str(byte_data), "--out", str(tmp_path / "b"), "--max_iters", "2",
                            "--init", str(grown)]))
    moments = checkpoint.load(grown)["optimizer"]["state"]
    assert len(t.optimizer.state) == len(moments) == len(list(t.model.parameters()))
    first = next(iter(t.model.parameters()))
    assert torch.equal(t.optimizer.state[first]["exp_avg"], moments[0]["exp_avg"])
