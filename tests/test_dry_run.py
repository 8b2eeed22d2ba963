"""run_family.sh DRY_RUN=1: each stage's train.py command and memory layout, for the paper family on
8, 16 and 64 GPUs (80 GB each by default); nothing is prepared, grown, trained or evaluated."""
import json
import os
import re
import subprocess

import pytest

from conftest import ROOT
from family_guard import GUARD, dry_run_commands


def dry_run(tmp_path, **env):
    env = {**os.environ, "FAMILY": "paper", "DRY_RUN": "1", "SKIP_INDEPENDENT": "1", "OUT": str(tmp_path),
           "DATA": str(tmp_path / "no_data"), **env}
    return subprocess.run(["bash", "run_family.sh"], cwd=ROOT, capture_output=True, text=True, env=env,
                          timeout=600)


STAGE = re.compile(r"stage (\w+): micro-batch (\d+) x accumulation (\d+) x (\d+) processes = 1024; "
                   r"(ddp|fsdp), activation checkpointing (on|off); planned ([\d.]+) GB of ([\d.]+) GB")


def check_paper(r, tmp_path, nproc, members=("1b", "2b", "4b", "8b")):
    assert r.returncode == 0, r.stderr[-2000:]
    stages = STAGE.findall(r.stdout)
    assert [s[0] for s in stages] == list(members)
    commands = [ln.strip() for ln in r.stdout.splitlines() if "train.py --size" in ln]
    assert len(commands) == len(members)
    for (size, micro, accum, n, *_, planned, usable), cmd in zip(stages, commands):
        assert int(micro) * int(accum) * int(n) == 1024 and int(n) == nproc
        assert float(planned) <= float(usable) == 72.0
        assert cmd.startswith(f"torchrun --standalone --nproc_per_node={nproc} train.py --size {size} ")
        assert f"--batch_size {micro} --grad_accum {accum} " in cmd
    assert "--init" in commands[1] and "(dry run) python3 expand.py" in r.stdout
    assert not (tmp_path / "no_data").exists() and not list(tmp_path.rglob("*.pt"))


def test_two_paper_stages_on_8_gpus(tmp_path):
    check_paper(dry_run(tmp_path, NPROC="8", MEMBERS="4b,8b"), tmp_path, 8, ("4b", "8b"))


def test_paper_dry_run_prints_the_recorded_commands(tmp_path):
    """Every step of the paper family on 8 GPUs, independent members included, as the code printed it
    before run_family.sh was rewritten (tests/family_guard.json): layouts, train.py, expand.py, evaluate.py."""
    r = dry_run(tmp_path, NPROC="8", SKIP_INDEPENDENT="0")
    assert r.returncode == 0, r.stderr[-2000:]
    assert dry_run_commands(r.stdout, str(tmp_path), str(tmp_path / "no_data")) == \
        json.loads(GUARD.read_text())["paper_dry_run_nproc_8"]


@pytest.mark.parametrize("nproc", [8, 16, 64])  # what the issue asks CI to check; ~8 s each when idle
def test_paper_family(tmp_path, nproc):
    check_paper(dry_run(tmp_path, NPROC=str(nproc)), tmp_path, nproc)


def test_stages_that_do_not_fit_fail(tmp_path):
    r = dry_run(tmp_path, NPROC="8", GPU_MEM="16", MEMBERS="4b,8b")
    assert r.returncode == 1
    assert "8b: micro-batch 1 x accumulation 128" in r.stdout.replace("stage 8b", "8b")
    assert "DOES NOT FIT" in r.stdout and "error: stages 8b do not fit 8 GPUs of 16 GB" in r.stderr


@pytest.mark.parametrize("nproc", ["0", "3"])
def test_bad_nproc_is_refused(tmp_path, nproc):
    r = dry_run(tmp_path, NPROC=nproc)
    assert r.returncode == 2 and "error:" in r.stderr and "NPROC" in r.stderr
