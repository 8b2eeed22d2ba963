"""train.py's recipe on known answers: the LR schedule (lr_at and the LR it logs), the gradient of an
accumulated step, and torch's RNG across --resume. Each would let a wrong recipe train quietly (Adam
hides a gradient scaled by a constant); the data is random bytes, so nothing here needs ../shared."""
import json
import math

import pytest
import torch

import checkpoint
import flops
from conftest import mean_loss_gradient
from expand import expand
from model import PRESETS
from train import Trainer, TrainConfig, lr_at, parse_args
from util import UserError

LR, MIN_LR = 1e-2, 1e-3


def args(data, out, *extra):
    return parse_args(["--size", "20k", "--data", str(data), "--out", str(out), "--batch_size", "4",
                       "--seq_len", "32", "--eval_tokens", "1024", "--log_interval", "1",
                       "--lr", str(LR), "--min_lr", str(MIN_LR), *map(str, extra)])


def cosine(step, max_iters, warmup):
    """The paper's schedule written out: linear warmup to LR over `warmup` steps, then half a cosine
    from LR down to MIN_LR at step max_iters."""
    if step < warmup:
        return LR * (step + 1) / warmup
    return MIN_LR + (LR - MIN_LR) * (1 + math.cos(math.pi * (step - warmup) / (max_iters - warmup))) / 2


# ---------------------------------------------------------------------------------------------
# lr_at

@pytest.mark.fast
def test_warmup_starts_above_zero_and_reaches_the_max_lr_on_its_last_step():
    cfg = TrainConfig(lr=LR, min_lr=MIN_LR)
    assert lr_at(0, cfg, 100, 10) == pytest.approx(LR / 10)  # the first step already trains
    assert lr_at(4, cfg, 100, 10) == pytest.approx(LR / 2)
    assert lr_at(9, cfg, 100, 10) == pytest.approx(LR)  # the last warmup step
    assert lr_at(0, cfg, 100, 0) == pytest.approx(LR)  # no warmup: the max LR from the first step


def test_cosine_decays_from_the_max_lr_to_min_lr():
    cfg = TrainConfig(lr=LR, min_lr=MIN_LR)
    assert lr_at(10, cfg, 100, 10) == pytest.approx(LR)
    assert lr_at(55, cfg, 100, 10) == pytest.approx((LR + MIN_LR) / 2)  # halfway through the decay
    assert lr_at(100, cfg, 100, 10) == pytest.approx(MIN_LR)  # the end of the stage
    assert lr_at(99, cfg, 100, 10) == pytest.approx(MIN_LR + (LR - MIN_LR) * (1 + math.cos(math.pi * 89 / 90)) / 2)
    assert lr_at(100, TrainConfig(lr=LR), 100, 10) == pytest.approx(LR / 10)  # default min_lr: lr / 10


def test_wsd_holds_the_max_lr_then_decays_linearly_to_min_lr():
    cfg = TrainConfig(lr=LR, min_lr=MIN_LR, schedule="wsd", decay_frac=0.2)  # decay from step 80 of 100
    assert lr_at(0, cfg, 100, 10) == pytest.approx(LR / 10)
    assert [lr_at(s, cfg, 100, 10) for s in (10, 50, 79, 80)] == pytest.approx([LR] * 4)  # stable
    assert lr_at(90, cfg, 100, 10) == pytest.approx((LR + MIN_LR) / 2)
    assert lr_at(95, cfg, 100, 10) == pytest.approx(LR + (MIN_LR - LR) * 15 / 20)
    assert lr_at(100, cfg, 100, 10) == pytest.approx(MIN_LR)


# ---------------------------------------------------------------------------------------------
# train.py's defaults: the family's recipe (flops.recipe)

@pytest.mark.fast
def test_defaults_train_a_member_as_the_family_does(random_bytes, tmp_path):
    """train.py --size 250k --tokens N alone: the tiny family's 250k stage (run_family.sh's default,
    LR_SCHEDULE=adjusted): its max and final LR, batch and schedule, and a warmup of 5% of the tokens."""
    base = ["--size", "250k", "--data", str(random_bytes), "--out", str(tmp_path), "--tokens", "409600"]
    t = Trainer(parse_args(base))
    assert (t.cfg.lr, t.cfg.min_lr, t.cfg.batch_size, t.cfg.grad_accum, t.cfg.schedule) == \
        (8e-3, 8e-3 * 0.1, 16, 1, "cosine")
    assert (t.max_iters, t.warmup) == (100, 5)  # 409,600 tokens / (16 x 256); 5% = 20,480 tokens = 5 steps
    stage = flops.plan("tiny", lr_schedule="adjusted")["independent"][-1]
    assert (stage["size"], stage["lr"], stage["min_lr"], stage["batch_size"]) == ("250k", t.cfg.lr, t.cfg.min_lr, 16)
    # the micro-batch keeps the family's batch under accumulation; an accumulation that does not divide it is refused
    assert Trainer(parse_args(base + ["--grad_accum", "4"])).cfg.batch_size == 4
    with pytest.raises(UserError, match="do not divide the 250k family's batch of 16"):
        Trainer(parse_args(base + ["--grad_accum", "3"]))
    # what is given wins
    t = Trainer(parse_args(base + ["--lr", "1e-3", "--warmup", "7", "--batch_size", "8", "--schedule", "wsd"]))
    assert (t.cfg.lr, t.cfg.min_lr, t.cfg.batch_size, t.warmup, t.cfg.schedule) == (1e-3, 1e-3 * 0.1, 8, 7, "wsd")


# ---------------------------------------------------------------------------------------------
# The LR train.py applies and logs

def logged_lrs(out) -> list[float]:
    return [r["lr"] for r in map(json.loads, open(out / "metrics.jsonl")) if "lr" in r]


def test_logged_lr_follows_the_schedule_from_scratch_and_in_a_grown_stage(random_bytes, tmp_path):
    """metrics.jsonl's lr of every step is the formula's; a stage started from a checkpoint (--init,
    as a grown member is) runs its own schedule from its own step 0, not its source's."""
    t = Trainer(args(random_bytes, tmp_path / "a", "--max_iters", 8, "--warmup", 2))
    t.run()
    assert logged_lrs(tmp_path / "a") == pytest.approx([cosine(s, 8, 2) for s in range(8)], rel=1e-12)
    assert t.optimizer.param_groups[0]["lr"] == pytest.approx(cosine(7, 8, 2))  # what the step used
    grown = tmp_path / "grown.pt"
    checkpoint.save(grown, expand(checkpoint.load(tmp_path / "a" / "ckpt.pt"), PRESETS["50k"], method="aki"))
    Trainer(args(random_bytes, tmp_path / "b", "--max_iters", 6, "--warmup", 3, "--size", "50k", "--init", grown)).run()
    assert logged_lrs(tmp_path / "b") == pytest.approx([cosine(s, 6, 3) for s in range(6)], rel=1e-12)
    Trainer(args(random_bytes, tmp_path / "c", "--max_iters", 10, "--warmup", 2, "--schedule", "wsd")).run()
    wsd = [LR / 2, LR, LR, LR, LR, LR, LR, LR, LR, (LR + MIN_LR) / 2]  # decay over the last 2 of 10 steps
    assert logged_lrs(tmp_path / "c") == pytest.approx(wsd, rel=1e-12)


# ---------------------------------------------------------------------------------------------
# Gradient accumulation

@pytest.mark.fast
def test_accumulated_step_has_the_gradient_of_the_mean_loss(random_bytes, tmp_path):
    """--grad_accum 2 without clipping: the gradient the optimizer steps on is the gradient of the
    mean of the two micro-batches' losses (not their sum), and the step's loss and norm are theirs."""
    t = Trainer(args(random_bytes, tmp_path, "--max_iters", 1, "--grad_accum", 2, "--grad_clip", 0))
    weights = {k: v.clone() for k, v in t.model.state_dict().items()}
    loss, gnorm = t.train_step()
    want = mean_loss_gradient(t.model_cfg, weights, t.train_tokens, 32, 4, t.cfg.seed, 0, 2)
    for name, p in t.model.named_parameters():
        torch.testing.assert_close(p.grad, want[name], rtol=1e-5, atol=1e-7, msg=name)
    assert gnorm == pytest.approx(torch.cat([g.flatten() for g in want.values()]).norm().item(), rel=1e-5)


# ---------------------------------------------------------------------------------------------
# --resume

def test_resume_restores_the_rng_state_it_saved(random_bytes, tmp_path):
    """Nothing draws from torch's RNG after the initialisation today; dropout or sampling during
    training would, and a resumed run must then draw what the uninterrupted one draws."""
    first = Trainer(args(random_bytes, tmp_path, "--max_iters", 6, "--stop_at", 3))
    torch.rand(7)  # the global RNG moved on since the seeded initialisation: the state is this run's own
    first.run()
    saved = checkpoint.load(tmp_path / "ckpt.pt")["train"]["rng"]
    assert torch.equal(saved, torch.get_rng_state())
    torch.manual_seed(12345)  # another state, as a fresh process would have
    resumed = Trainer(args(random_bytes, tmp_path, "--max_iters", 6, "--resume"))
    assert resumed.step == 3 and torch.equal(torch.get_rng_state(), saved)


def test_each_family_stage_trains_with_train_py_s_own_defaults(random_bytes, tmp_path):
    """One recipe: every stage family.py gives run_family.sh (tiny family, adjusted LR, QUICK's budget)
    sets exactly what train.py alone chooses for that size and token budget: max and final LR, schedule,
    batch, accumulation, warmup steps and steps."""
    import family
    o = {**{k: default for k, (default, _) in family.OPTIONS.items()}, "OUT": str(tmp_path), "DATA": str(random_bytes),
         "SCHEDULE": "cosine", "MEMBERS": "20k,50k,120k,250k"}
    plan = flops.plan("tiny", chinchilla=0.05, lr_schedule="adjusted")
    keys = ("lr", "min_lr", "schedule", "batch_size", "grad_accum")
    for kind, stages in (("progressive", plan["progressive"]), ("independent", plan["independent"][1:])):
        for s in stages:  # (the smallest independent member is the first progressive stage, reused)
            cmd = family.stage(o, plan, "7", kind, s["size"])["cmd"]
            if "--init" in cmd:  # the grown checkpoint is not needed to see the settings
                del cmd[cmd.index("--init"):cmd.index("--init") + 2]
            given = Trainer(parse_args(cmd[cmd.index("train.py") + 1:]))
            alone = Trainer(parse_args(["--size", s["size"], "--data", str(random_bytes), "--tokens", str(s["tokens"]),
                                        "--out", str(tmp_path / "alone")]))
            assert [getattr(given.cfg, k) for k in keys] + [given.warmup, given.max_iters] == \
                [getattr(alone.cfg, k) for k in keys] + [alone.warmup, alone.max_iters], (kind, s["size"])
