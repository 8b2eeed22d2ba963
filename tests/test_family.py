"""run_family.sh end to end (QUICK=1): plan -> progressive stages -> independent members -> report."""
import fcntl
import json
import os
import random
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import torch

import checkpoint
from conftest import ROOT, SHARED, assert_user_error
from family_guard import GUARD, model_hashes


def run_family(out, data, *args, **env):
    proc = subprocess.run(["bash", "run_family.sh", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=1200, env={**os.environ, "QUICK": "1", "OUT": str(out), "DATA": str(data),
                                             "PGF_SHARED": str(SHARED), **env})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def quick(byte_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("family")
    # two threads, as family_guard.json was recorded (CI's 2 cores): torch splits reductions by
    # thread, so another count rounds differently and the bit-identical guard could not hold
    return out, run_family(out, byte_data, "--seed", "7", OMP_NUM_THREADS="2")


def test_quick_family_spends_the_planned_flops(quick):
    out, _ = quick
    plan = json.loads((out / "plan.json").read_text())
    run = out / "seed_7"
    spent = {kind: [checkpoint.load(run / kind / f"ckpt_{s['size']}.pt")["train"]["flops"] for s in plan[kind]]
             for kind in ("progressive", "independent")}
    for kind in spent:
        assert sum(spent[kind]) == pytest.approx(plan[f"{kind}_flops"], rel=0.02)
    largest = checkpoint.load(run / "progressive" / f"ckpt_{plan['members'][-1]}.pt")
    assert largest["meta"]["flops_total"] == pytest.approx(sum(spent["progressive"]))
    assert largest["meta"]["expansion"]["method"] == "aki"
    report = json.loads((run / "report" / "report.json").read_text())
    # the report evaluates every member of both families, and counts the FLOPs they were trained with
    assert [(m["family"], m["name"]) for m in report["members"]] == \
        [(kind, size) for kind in ("progressive", "independent") for size in plan["members"]]
    assert report["flops"]["progressive"] == pytest.approx(sum(spent["progressive"]))
    assert report["flops"]["independent"] == pytest.approx(sum(spent["independent"]))
    assert report["flops"]["planned"]["saving"] == pytest.approx(plan["saving"])
    assert (run / "report" / "report.md").read_text().startswith("# Family evaluation\n\n## Verdict\n\nFLOPs: ")
    assert (run / "report" / "loss_vs_flops.png").stat().st_size > 10_000


def test_quick_family_is_bit_identical_to_the_recorded_one(quick):
    """Nothing trained changes when the code around it is restructured: every checkpoint of the QUICK
    family (seed 7) holds the model tensors the code gave before run_family.sh was rewritten."""
    guard = json.loads(GUARD.read_text())
    if torch.__version__ != guard["torch"]:
        pytest.skip(f"{GUARD.name} was recorded with torch {guard['torch']}, not {torch.__version__}")
    out, _ = quick
    assert model_hashes(out / "seed_7") == guard["quick_family_seed_7"]


@pytest.mark.slow
def test_tiny_llama_family_grows_and_evaluates(byte_data, tmp_path):
    """FAMILY=tiny-llama with the same commands: the two smallest Llama members, trained, grown
    (AKI across query groups, SwiGLU and RMSNorm) and evaluated; the full family is
    test_tiny_llama_family_end_to_end."""
    run_family(tmp_path, byte_data, FAMILY="tiny-llama", MEMBERS="llama-20k,llama-50k", SKIP_INDEPENDENT="1")
    grown = checkpoint.load(tmp_path / "seed_1337" / "progressive" / "ckpt_llama-50k.pt")
    assert grown["config"].norm == "rmsnorm" and grown["meta"]["lineage"] == ["llama-20k"]
    assert grown["train"]["done"] and grown["meta"]["expansion"]["method"] == "aki"
    report = json.loads((tmp_path / "seed_1337" / "report" / "report.json").read_text())
    assert report and (tmp_path / "seed_1337" / "report" / "report.md").is_file()


@pytest.mark.slow
def test_tiny_llama_family_end_to_end(byte_data, tmp_path):
    """All four tiny-llama members, progressive and independent, and the report (~3 min idle)."""
    run_family(tmp_path, byte_data, FAMILY="tiny-llama")
    report = (tmp_path / "seed_1337" / "report" / "report.md").read_text()
    assert all(s in report for s in ("llama-20k", "llama-250k", "progressive", "independent"))


def assert_ends_with_the_report(proc, report):
    """The run's last lines: where the report is, then its verdict (when evaluate.py wrote one)."""
    out = re.sub(r"^\[\d\d:\d\d:\d\d\] ", "", proc.stdout.strip(), flags=re.MULTILINE)
    verdict = json.loads((report / "report.json").read_text()).get("verdict")
    assert out.endswith(f"\nreport: {report / 'report.md'}" + (f"\nverdict: {verdict}" if verdict else "")), out[-2000:]


def test_progress_line_before_every_stage(quick):
    """[stage k/n] before each of the n training stages (progressive and independent), with the time
    so far and the ETA of the rest; the first ETA is unknown until a stage has trained."""
    out, proc = quick
    n = 2 * len(json.loads((out / "plan.json").read_text())["members"])
    found = re.findall(r"\[stage (\d+)/(\d+)\] seed 7: (progressive|independent) (\w+) \| elapsed [\d.]+ min \| "
                       r"ETA of the whole run (~[\d.]+ min|known after the first stage)", proc.stdout)
    assert [(int(k), int(of)) for k, of, *_ in found] == [(k, n) for k in range(1, n + 1)], proc.stdout[:3000]
    assert [kind for _, _, kind, _, _ in found] == ["progressive"] * (n // 2) + ["independent"] * (n // 2)
    assert found[0][4] == "known after the first stage" and all(eta.startswith("~") for *_, eta in found[1:])
    assert re.search(r"\[after stage \d+/\d+\] seed 7: evaluation", proc.stdout)
    assert_ends_with_the_report(proc, out / "seed_7" / "report")


def test_rerun_of_a_finished_family_trains_nothing(quick, byte_data):
    out, _ = quick
    ckpts = sorted(out.rglob("ckpt_*.pt"))
    before = {p: p.stat().st_mtime_ns for p in ckpts}
    again = run_family(out, byte_data, "--seed", "7")
    assert "| loss" not in again.stdout and "already complete" in again.stdout, again.stdout[:3000]
    assert {p: p.stat().st_mtime_ns for p in sorted(out.rglob("ckpt_*.pt"))} == before
    assert "report is up to date" in again.stdout  # evaluation skipped: the verdict comes from report.json
    assert_ends_with_the_report(again, out / "seed_7" / "report")


def test_second_run_on_the_same_out_is_refused(byte_data, tmp_path):
    with open(tmp_path / ".lock", "w") as lock:  # as a running run_family.sh holds it
        fcntl.flock(lock, fcntl.LOCK_EX)
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        proc = subprocess.run(["bash", "run_family.sh"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                              env={**os.environ, "OUT": str(tmp_path), "DATA": str(byte_data)})
    assert_user_error(proc, f"another run_family.sh (PID {os.getpid()}), or a training it started, is running "
                            f"on {tmp_path}")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock"]  # nothing planned, nothing trained


@pytest.mark.fast
@pytest.mark.parametrize("argv, env, words", [
    (["--nproc", "0"], {}, "NPROC must be a positive integer"),
    (["--method", "xyz"], {}, "METHOD is one of aki fpi, not 'xyz'"),
    ([], {"SEEDS": "1 x"}, "SEEDS must be integers"),
    (["--noise", "-0.1"], {}, "NOISE must be a number >= 0"),
    (["--opt-state", "yes"], {}, "OPT_STATE is one of 0 1"),
    (["--family", "huge"], {}, "unknown family 'huge'"),
    (["--members", "20k,9b"], {}, "9b not in the tiny family"),
    (["--data", "/nonexistent"], {}, "DATA=/nonexistent is not a folder made by data/prepare.py"),
], ids=["nproc", "method", "seeds", "noise", "opt-state", "family", "members", "data"])
def test_bad_options_are_refused_before_anything_runs(tmp_path, argv, env, words):
    """Every option is checked up front: one error line, exit 2, no data prepared and nothing trained."""
    proc = subprocess.run(["bash", "run_family.sh", *argv], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OUT": str(tmp_path / "out"), "PGF_SHARED": str(SHARED), **env})
    assert_user_error(proc, words)
    assert not list(tmp_path.glob("out/seed_*")) and "prepare" not in proc.stdout


def test_a_failing_step_fails_the_run(byte_data, tmp_path):
    """set -e reaches the stage loops: a stage that fails stops the script with its status."""
    data = tmp_path / "data"
    shutil.copytree(byte_data, data)
    meta = json.loads((data / "meta.json").read_text())
    (data / "meta.json").write_text(json.dumps({**meta, "tokenizer": "gpt2", "vocab_size": 50257}))
    proc = subprocess.run(["bash", "run_family.sh"], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "QUICK": "1", "OUT": str(tmp_path / "out"), "DATA": str(data)})
    assert proc.returncode == 2 and "tokenized with gpt2" in proc.stderr, proc.stderr[-2000:]
    assert "done:" not in proc.stdout and not (tmp_path / "out" / "seed_1337" / "report").exists()


@pytest.mark.fast
def test_bad_option_is_one_line():
    proc = subprocess.run(["bash", "run_family.sh", "--colour", "red"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: unknown option --colour")


def test_family_killed_between_and_within_stages_ends_as_if_uninterrupted(quick, byte_data, tmp_path):
    ref, _ = quick
    rng = random.Random(3)
    env = {**os.environ, "QUICK": "1", "OUT": str(tmp_path), "DATA": str(byte_data), "PGF_SHARED": str(SHARED)}
    for _ in range(3):  # the whole process group dies: bash, train.py or expand.py, whatever runs
        proc = subprocess.Popen(["bash", "run_family.sh", "--seed", "7"], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            proc.wait(timeout=rng.uniform(5, 25))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        with open(tmp_path / ".lock", "a") as lock:  # the run's processes hold it until they are gone
            fcntl.flock(lock, fcntl.LOCK_EX)
    run_family(tmp_path, byte_data, "--seed", "7")
    for kind in ("progressive", "independent"):
        for a in sorted((ref / "seed_7" / kind).glob("ckpt_*.pt")):
            b = checkpoint.load(tmp_path / "seed_7" / kind / a.name)
            a = checkpoint.load(a)
            assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"]), a


def train_child(bash: int) -> int:
    """The train.py process that run_family.sh (PID bash) runs now: its child, found in /proc."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            pid, rest = stat.read_text().split(" (", 1)
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:  # a process that ended meanwhile
            continue
        if int(rest.rsplit(") ", 1)[1].split()[1]) == bash and b"train.py" in cmdline:
            return int(pid)
    raise AssertionError(f"no train.py under PID {bash}")


@pytest.mark.slow
def test_sigterm_to_a_stage_stops_the_family_and_a_rerun_ends_as_if_uninterrupted(quick, byte_data, tmp_path):
    """SIGTERM to train.py mid-stage: it checkpoints and exits 143, run_family.sh stops with it (no
    growth from the unfinished stage, no "done"); the re-run finishes the stage, grows from the
    finished member, and every progressive checkpoint equals the uninterrupted run's bit for bit."""
    ref, _ = quick
    env = {**os.environ, "QUICK": "1", "OUT": str(tmp_path), "DATA": str(byte_data), "PGF_SHARED": str(SHARED),
           "SKIP_INDEPENDENT": "1"}
    proc = subprocess.Popen(["bash", "run_family.sh", "--seed", "7"], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stage = ""
    for line in proc.stdout:  # the first step of the 120k stage (46 steps): SIGTERM its train.py
        stage = line.split(":", 1)[0] if line.startswith("stage ") else stage
        if stage == "stage 120k" and "| loss" in line:
            os.kill(train_child(proc.pid), signal.SIGTERM)
            break
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 143, err[-2000:]
    assert "stopped by signal SIGTERM" in err and "done:" not in out
    prog = tmp_path / "seed_7" / "progressive"
    stopped = checkpoint.load(prog / "ckpt_120k.pt")
    assert not stopped["train"]["done"] and 0 < stopped["train"]["step"] < stopped["train"]["max_iters"]
    assert not (prog / "ckpt_120k_expanded.pt").exists()
    run_family(tmp_path, byte_data, "--seed", "7", SKIP_INDEPENDENT="1")
    for a in sorted((ref / "seed_7" / "progressive").glob("ckpt_*.pt")):
        b, a = checkpoint.load(prog / a.name), checkpoint.load(a)
        assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"]), a
        if a["optimizer"]:
            assert all(torch.equal(v[m], b["optimizer"]["state"][k][m])
                       for k, v in a["optimizer"]["state"].items() for m in v)


def test_grow_from_the_stable_phase(byte_data, tmp_path):
    """GROW_FROM=stable: each member is grown from its predecessor's weights before the decay; the
    members themselves finish their decay, and the largest still counts every stage's FLOPs."""
    run_family(tmp_path, byte_data, "--seed", "7", "--members", "20k,50k,120k", "--schedule", "wsd",
               "--grow-from", "stable", SKIP_INDEPENDENT="1")
    prog = tmp_path / "seed_7" / "progressive"
    assert sorted(p.name for p in prog.glob("*_stable.pt")) == ["ckpt_20k_stable.pt", "ckpt_50k_stable.pt"]
    grown = checkpoint.load(prog / "ckpt_20k_expanded.pt")
    stable, final = checkpoint.load(prog / "ckpt_20k_stable.pt"), checkpoint.load(prog / "ckpt_20k.pt")
    assert stable["meta"]["stable_phase_end"]["step"] < final["train"]["step"] and final["train"]["done"]
    assert grown["meta"]["flops_total"] == pytest.approx(final["meta"]["flops_total"])
    # width grows by whole heads and AKI copies the source's first-layer rows: those rows are the stable ones
    assert torch.equal(grown["model"]["wte.weight"][:, :16], stable["model"]["wte.weight"])
    assert not torch.equal(grown["model"]["wte.weight"][:, :16], final["model"]["wte.weight"])
    largest = checkpoint.load(prog / "ckpt_120k.pt")
    spent = sum(checkpoint.load(prog / f"ckpt_{s}.pt")["train"]["flops"] for s in ("20k", "50k", "120k"))
    assert largest["meta"]["flops_total"] == pytest.approx(spent)
    proc = subprocess.run(["bash", "run_family.sh", "--grow-from", "stable"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and "needs SCHEDULE=wsd" in proc.stderr
