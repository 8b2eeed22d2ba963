"""Wall-clock intervals of long runs (--log_every_min, --ckpt_every_min), with a fake clock: a log line
and a checkpoint when the minutes have passed, whatever the steps; metrics.jsonl does not change."""
import json

import pytest

from train import Every, Trainer, parse_args


def test_every_is_due_once_the_minutes_have_passed():
    now = [0.0]
    every = Every(1.5, clock=lambda: now[0])
    due = []
    for t in range(0, 400, 30):  # seconds
        now[0] = t
        due.append(every.due())
    assert [t for t, d in zip(range(0, 400, 30), due) if d] == [90, 180, 270, 360]
    now[0] = 400
    every.reset()
    now[0] = 480
    assert not every.due()
    assert not any(Every(0, clock=lambda: 1e9).due() for _ in range(3))  # 0: off


@pytest.mark.parametrize("minutes, logged, saved", [
    (1, [3, 6, 8], [3, 6, 8]),  # 25 s a step: every third step passes a minute
    (0, [8], [8]),  # off (the CPU default for checkpoints): the step intervals alone
])
def test_trainer_logs_and_checkpoints_on_the_clock(byte_data, tmp_path, minutes, logged, saved):
    t = Trainer(parse_args(["--size", "20k", "--data", str(byte_data), "--out", str(tmp_path), "--max_iters", "8",
                            "--batch_size", "4", "--seq_len", "64", "--eval_tokens", "2048", "--log_interval", "100",
                            "--eval_interval", "100", "--ckpt_interval", "100", "--log_every_min", str(minutes),
                            "--ckpt_every_min", str(minutes)]))
    for timer in (t.log_timer, t.ckpt_timer):
        timer.clock = lambda: 25.0 * t.step
        timer.reset()
    steps, save = [], t.save
    t.save = lambda **kw: (steps.append(t.step), save(**kw))
    t.run()
    assert steps == saved
    lines = [ln for ln in (tmp_path / "train.log").read_text().splitlines() if "| loss" in ln]
    assert [int(ln.split()[1].split("/")[0]) for ln in lines] == logged
    rows = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [8]  # the clock's lines are not metrics rows


RANKS = r"""
import json, sys
import parallel, train
t = train.Trainer(train.parse_args(sys.argv[2:]))
# the ranks' clocks disagree: rank 1's says a checkpoint is due at every step, rank 0's every third
t.ckpt_timer.clock = (lambda: 25.0 * t.step) if t.dist.rank == 0 else (lambda: 1e6 * t.step)
t.ckpt_timer.reset()
steps, save = [], t.save
t.save = lambda **kw: (steps.append(t.step), save(**kw))
t.run()
with open(f"{sys.argv[1]}/saved{t.dist.rank}.json", "w") as f:
    json.dump(steps, f)
parallel.teardown()
parallel.leave(t.dist)
"""


def test_rank_0s_clock_decides_the_checkpoints_of_every_rank(byte_data, tmp_path):
    """Under FSDP a checkpoint is collective: ranks whose clocks disagree still save at the same
    steps, rank 0's (a rank saving alone would hang the others in its barrier)."""
    import os
    import subprocess
    import sys

    from conftest import ROOT
    script = tmp_path / "ranks.py"
    script.write_text(RANKS)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        str(script), str(tmp_path), "--size", "20k", "--data", str(byte_data), "--out",
                        str(tmp_path / "run"), "--max_iters", "8", "--batch_size", "2", "--seq_len", "64",
                        "--eval_tokens", "2048", "--log_interval", "100", "--eval_interval", "100",
                        "--ckpt_interval", "100", "--ckpt_every_min", "1", "--fsdp", "on"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(ROOT), "DIST_TIMEOUT_MIN": "1"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    saved = [json.loads((tmp_path / f"saved{rank}.json").read_text()) for rank in (0, 1)]
    assert saved == [[3, 6, 8], [3, 6, 8]]


@pytest.mark.parametrize("flag", ["--log_every_min", "--ckpt_every_min", "--gpu_mem"])
def test_negative_minutes_or_budget_are_refused(tmp_path, flag):
    from conftest import assert_user_error, run_script
    r = run_script("train.py", "--size", "20k", "--data", tmp_path, "--max_iters", "1", flag, "-1")
    assert_user_error(r, flag)
