"""
What a family saves at equal loss, against a baseline tuned as carefully as the method.

Every run is WSD with a fixed number of warmup steps, so one long run gives the final loss at many
budgets: it keeps its state where a shorter run would start its decay (train.py --branches), and a
short decay from there (--branch_from) is that shorter run, bit for bit (tests/test_train.py).

    python experiments/equal_loss.py sweep            # seed 1: max LR (and decay to 0 or 10%) per member
    python experiments/equal_loss.py curves --seeds 1 2 3   # loss at 0.5 .. 2x each member's budget
    python experiments/equal_loss.py frontier --seeds 1 2 3  # the progressive family on smaller budgets
    python experiments/equal_loss.py collect          # the compact results -> results/runs/equal_loss.json

sweep: each independent member at its planned budget for max LRs a factor of 2 apart around the
family's adjusted LR, widened until the best is bracketed, then the best LR decaying to 0 instead
of lr/10; the progressive chain likewise, stage by stage, each grown from the best previous member.
curves: with the chosen settings, every independent member and every progressive stage trained to
2x its budget with branches at 0.5, 0.75, 1, 1.25 and 1.5x; the 1x branch is the member the next
stage grows from. frontier: the progressive family with every grown stage's budget scaled by
--budget_scales (flops.plan's budget_scale: the family costs that fraction of its largest member
alone), grown from each stage's final weights or (--grow_from stable) its weights before the decay;
or (--shrink last) with the earlier stages as planned (the curves' runs) and only the largest
member's stage shortened; --aki_top, --noise and --rewarmup change how each stage grows and warms
up. Each member's final loss against its independent counterpart's gives the saving a recipe can reach.
The trend: the same phases with --family tiny5 (one more member; its smaller stages are tiny's runs)
or --chinchilla 2 (another --out: its runs are longer), each collected into its own --results file
(results/runs/equal_loss_*.json), which summarize.py sets beside the tiny family's.
Runs are resumable and skipped when done; two run side by side (--jobs).
"""
import argparse
import concurrent.futures as cf
import json
import math
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from util import ArgumentParser, UserError, read_jsonl, run_cli, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MULTIPLES = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0)  # budgets of a curve, x the member's planned budget
LR_MULTS = (0.5, 1.0, 2.0, 4.0)  # the first sweep, x the family's adjusted LR; widened by 2x at an edge
MIN_LR_RATIOS = (0.1, 0.0)  # the decay ends at lr/10 (the recipe) or at 0


def parse_args(argv=None):
    ap = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("phase", choices=["sweep", "curves", "frontier", "collect"], help="what to run (see above)")
    ap.add_argument("--family", default="tiny", help="family of model.py (default tiny)")
    ap.add_argument("--chinchilla", type=float, default=1.0, help="x 20 tokens/param per member (default 1)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1], help="curves: seeds (default 1)")
    ap.add_argument("--families", nargs="+", choices=["independent", "progressive"],
                    default=["independent", "progressive"], help="sweep: which families (default both)")
    ap.add_argument("--settings", choices=["plan", "sweep"], default="sweep",
                    help="curves: max LR and final LR from the family plan (flops.py, adjusted) or from "
                         "the sweep (default)")
    ap.add_argument("--budget_scales", type=float, nargs="+", default=[0.5, 0.6, 0.7, 0.8],
                    help="frontier: the progressive family's budgets, x its largest member's (default 0.5 0.6 0.7 0.8)")
    ap.add_argument("--grow_from", choices=["final", "stable"], default="final",
                    help="frontier: grow each stage from its final weights or from those before its decay")
    ap.add_argument("--shrink", choices=["all", "last"], default="all",
                    help="frontier: scale every grown stage, or only the last (the others keep their planned FLOPs)")
    ap.add_argument("--aki_top", choices=["noise", "below"], default="noise",
                    help="frontier: expand.py's --aki_top for every growth (default noise, the family's)")
    ap.add_argument("--noise", type=float, default=None,
                    help="frontier: expand.py's --noise for every growth (default: expand.py's, 0.1)")
    ap.add_argument("--rewarmup", type=float, default=None,
                    help="frontier: each grown stage's LR warmup, as a fraction of its steps (default: the "
                         "plan's, 0.05 of its tokens)")
    ap.add_argument("--data", default="data/openstax_bytes", help="folder from data/prepare.py")
    ap.add_argument("--out", default="runs/equal_loss", help="run folder (default runs/equal_loss)")
    ap.add_argument("--results", default="results/runs/equal_loss.json", help="collect: output JSON")
    ap.add_argument("--jobs", type=int, default=2, help="training runs side by side (default 2)")
    ap.add_argument("--eval_tokens", type=int, default=131072, help="validation tokens per evaluation")
    args = ap.parse_args(argv)
    if args.rewarmup is not None and not 0 <= args.rewarmup < 1:
        raise UserError(f"--rewarmup {args.rewarmup:g} is not a fraction of a stage's steps: give 0 <= F < 1")
    if args.noise is not None and args.noise < 0:
        raise UserError(f"--noise {args.noise:g} is negative: give 0 (the exact split) or more")
    return args


# ---------------------------------------------------------------------------------------------
# One training run (train.py) and its result

def run_dir(out: Path, family: str, size: str, seed: int, lr: float, min_lr_ratio: float, tag: str) -> Path:
    """family: independent | progressive; tag: the run's budget (e.g. 1x, 2x) or branch."""
    return out / f"seed_{seed}" / family / f"{size}_lr{lr:.3g}_min{min_lr_ratio:g}" / tag


def train(args, d: Path, size: str, steps: int, warmup: int, lr: float, min_lr_ratio: float, seed: int,
          batch: int, init: str = "", branches=(), branch_from: str = "", stable_ckpt: str = "") -> dict:
    """train.py for `steps` optimizer steps (WSD), resumable; its final validation loss and FLOPs."""
    d.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "train.py", "--size", size, "--data", args.data, "--max_iters", str(steps),
           "--warmup", str(warmup), "--lr", repr(lr), "--min_lr", repr(lr * min_lr_ratio), "--schedule", "wsd",
           "--batch_size", str(batch), "--seed", str(seed), "--eval_tokens", str(args.eval_tokens),
           "--out", str(d), "--resume"]
    cmd += ["--init", init] if init else []
    cmd += ["--branches", ",".join(f"{b:g}" for b in branches)] if branches else []
    cmd += ["--branch_from", branch_from] if branch_from else []
    cmd += ["--stable_ckpt", stable_ckpt] if stable_ckpt else []
    with open(d / "stdout.log", "a") as log:
        start = log.tell()
        proc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0 and not diverged(d / "stdout.log", start):
        # stopped (a signal, --stop_at) or refused: counting it as a bad LR would steer the sweep
        raise UserError(f"train.py stopped in {d} with exit status {proc.returncode} before its last step "
                        f"(see its stdout.log); fix what it says and re-run this phase: it resumes")
    return {"size": size, "seed": seed, "lr": lr, "min_lr_ratio": min_lr_ratio, "steps": steps, "init": init,
            "ckpt": str(d / "ckpt.pt"), **read_run(d, steps, proc.returncode)}


def diverged(log: Path, start: int = 0) -> bool:
    """Whether train.py's output from byte `start` of its log ends with a non-finite loss (train.py
    stops there, exit 2): the one failure a sweep counts as a result, an infinitely bad one."""
    with open(log, "rb") as f:
        f.seek(start)
        return b"non-finite loss" in f.read()


def read_run(d: Path, steps: int, returncode: int = 0) -> dict:
    """A run's result from its metrics.jsonl: complete (its last validation at `steps`), the final
    validation loss (infinite for a diverged run, so a sweep moves away from it), FLOPs, the curve."""
    rows = read_jsonl(d / "metrics.jsonl")
    vals = [r for r in rows if "val_loss" in r]
    ok = returncode == 0 and bool(vals) and vals[-1]["step"] == steps
    return {"ok": ok, "val_loss": vals[-1]["val_loss"] if ok and math.isfinite(vals[-1]["val_loss"]) else math.inf,
            "flops": vals[-1]["flops"] if vals else 0.0, "flops_total": vals[-1]["flops_total"] if vals else 0.0,
            "curve": [[r["step"], r["flops_total"], r["val_loss"]] for r in vals]}


def last_stage_fractions(args, budget_scale: float) -> list[float]:
    """flops.plan's stage_fractions (run_family.sh's STAGE_FRACTIONS) under which the grown stages but
    the last keep their planned FLOPs and the last gets the rest of budget_scale x the budget."""
    from flops import plan
    full = [st["flops"] for st in plan(args.family, args.chinchilla, "adjusted")["progressive"]]
    last = budget_scale * sum(full) - sum(full[:-1])
    if last <= 0:
        raise UserError(f"budget_scale {budget_scale:g} leaves nothing for the last stage when the others keep "
                        f"their planned FLOPs; use at least {sum(full[:-1]) / sum(full):.3g}")
    return [f / full[-1] for f in full[1:-1]] + [last / full[-1]]  # relative to the last stage's plan


def recipe(args, budget_scale: float = 1.0, shrink: str = "all") -> dict:
    """The family plan (flops.py, adjusted LR) as steps: {family: [stage]}, with warmup in steps; with
    budget_scale < 1 every grown stage is shortened alike, or (shrink="last") only the last one."""
    from flops import plan
    weights = last_stage_fractions(args, budget_scale) if shrink == "last" else None
    p = plan(args.family, args.chinchilla, "adjusted", stage_fractions=weights, budget_scale=budget_scale)
    out = {}
    for fam in ("progressive", "independent"):
        out[fam] = [{"size": s["size"], "lr": s["lr"], "batch": s["batch_size"],
                     "steps": max(1, round(s["tokens"] / (s["batch_size"] * s["seq_len"]))),
                     "warmup": s["warmup_tokens"] // (s["batch_size"] * s["seq_len"])} for s in p[fam]]
    return out


def grow(args, src: str, size: str, seed: int, knobs: dict | None = None) -> str:
    """expand.py with the family's defaults (AKI, stacked depth, noisy split), or with the frontier's
    knobs (aki_top, noise: expand.py's flags), named after them beside the source."""
    knobs = {k: v for k, v in (knobs or {}).items() if k in ("aki_top", "noise")}
    out = Path(src).with_name(Path(src).stem + f"_to_{size}" + knob_suffix(knobs) + ".pt")
    flags = [x for k, v in knobs.items() for x in (f"--{k}", f"{v:g}" if isinstance(v, float) else v)]
    if not out.exists():
        subprocess.run([sys.executable, "expand.py", "--src", src, "--size", size, "--seed", str(seed),
                        "--out", str(out)] + flags, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return str(out)


# ---------------------------------------------------------------------------------------------
# sweep: the best max LR and final LR of each member, at its planned budget, seed 1

def sweep_member(args, pool, family: str, stage: dict, init: str = "") -> dict:
    """Max LR x LR_MULTS around the plan's, widened by 2x while the best is at an edge, then the
    best LR decaying to 0 too. Returns every run; the best is the lowest final loss."""
    seed, runs = 1, {}

    def launch(mults, ratio):
        todo = [(m, ratio) for m in mults if (m, ratio) not in runs]
        futures = {k: pool.submit(train, args, run_dir(Path(args.out) / "sweep", family, stage["size"], seed,
                                                        stage["lr"] * k[0], k[1], "1x"),
                                  stage["size"], stage["steps"], stage["warmup"], stage["lr"] * k[0], k[1], seed,
                                  stage["batch"], init) for k in todo}
        runs.update({k: f.result() for k, f in futures.items()})

    launch(LR_MULTS, MIN_LR_RATIOS[0])
    for _ in range(3):  # at most 3 widenings: 8x or 1/8 x beyond the first grid
        mults = sorted(m for m, r in runs if r == MIN_LR_RATIOS[0])
        best = min(mults, key=lambda m: runs[(m, MIN_LR_RATIOS[0])]["val_loss"])
        if best not in (mults[0], mults[-1]):
            break
        launch([best * 2 if best == mults[-1] else best / 2], MIN_LR_RATIOS[0])
    best = min((m for m, r in runs), key=lambda m: runs[(m, MIN_LR_RATIOS[0])]["val_loss"])
    launch([best], MIN_LR_RATIOS[1])
    return {"family": family, "size": stage["size"], "runs": list(runs.values()),
            "best": min(runs.values(), key=lambda r: r["val_loss"])}


def pools(args):
    """(trainings: --jobs at once, the threads that plan and wait for them)."""
    return cf.ThreadPoolExecutor(args.jobs), cf.ThreadPoolExecutor(32)


class Lanes:
    """Two queues of trainings for curves: the progressive chain, whose stages wait for each other,
    never waits behind the independent members' runs (--jobs 2: a worker each; 1: one shared)."""

    def __init__(self, jobs: int):
        self.chain = cf.ThreadPoolExecutor(max(1, jobs // 2))
        self.independent = cf.ThreadPoolExecutor(max(1, jobs - jobs // 2)) if jobs > 1 else self.chain

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.chain.shutdown()
        self.independent.shutdown()


def sweep(args) -> list[dict]:
    rec = recipe(args)
    out = []
    pool, outer = pools(args)
    with pool, outer:
        # the independent members' sweeps queue their runs beside the progressive chain's
        indep = [outer.submit(sweep_member, args, pool, "independent", s) for s in rec["independent"][1:]
                 if "independent" in args.families]
        first = sweep_member(args, pool, "independent", rec["independent"][0])
        out.append(first)
        src = first["best"]["ckpt"]  # the smallest member is the first progressive stage
        for stage in rec["progressive"][1:] if "progressive" in args.families else []:
            res = sweep_member(args, pool, "progressive", stage, grow(args, src, stage["size"], 1))
            out.append(res)
            src = res["best"]["ckpt"]
        out += [f.result() for f in indep]
    write_json(Path(args.out) / f"sweep_{'_'.join(args.families)}.json", out)
    for r in out:
        b = r["best"]
        print(f"{r['family']:12s} {r['size']:>5s}: best max LR {b['lr']:.3g}, final LR {b['min_lr_ratio']:g} x max,"
              f" val loss {b['val_loss']:.4f}  (" + ", ".join(f"{x['lr']:.3g}/{x['min_lr_ratio']:g}: "
                                                            f"{x['val_loss']:.4f}" for x in r["runs"]) + ")")
    return out


def sweeps(out) -> list[dict]:
    """Every member's sweep, once (a later sweep of the same member wins: it holds the same runs)."""
    found = {(r["family"], r["size"]): r for p in sorted(Path(out).glob("sweep_*.json")) for r in json.loads(p.read_text())}
    return list(found.values())


def chosen(args) -> dict:
    """{(family, size): (lr, min_lr_ratio)} from the sweep, or from the plan (--settings plan)."""
    rec = recipe(args)
    if args.settings == "plan":
        return {(fam, st["size"]): (st["lr"], MIN_LR_RATIOS[0]) for fam in rec for st in rec[fam]}
    best = {(r["family"], r["size"]): (r["best"]["lr"], r["best"]["min_lr_ratio"]) for r in sweeps(args.out)}
    first = rec["independent"][0]["size"]
    best[("progressive", first)] = best.get(("independent", first))  # one run for both
    missing = [f"{fam} {st['size']}" for fam in rec for st in rec[fam] if (fam, st["size"]) not in best]
    if missing:
        raise UserError(f"no sweep for {', '.join(missing)} in {args.out}; run `python experiments/equal_loss.py "
                        f"sweep` first, or use --settings plan")
    return best


# ---------------------------------------------------------------------------------------------
# curves: every member at MULTIPLES x its budget from one long run and its decay branches

def curve(args, pool, family: str, stage: dict, lr: float, ratio: float, seed: int, init: str = "") -> list[dict]:
    base = run_dir(Path(args.out) / "curves", family, stage["size"], seed, lr, ratio, "")
    longest = max(MULTIPLES)
    steps = {m: round(m * stage["steps"]) for m in MULTIPLES}
    long = pool.submit(train, args, base / f"{longest:g}x", stage["size"], steps[longest], stage["warmup"], lr,
                       ratio, seed, stage["batch"], init,
                       branches=[m / longest for m in MULTIPLES if m < longest]).result()
    points = {m: pool.submit(train, args, base / f"{m:g}x", stage["size"], steps[m], stage["warmup"], lr, ratio,
                             seed, stage["batch"], init,
                             branch_from=str(base / f"{longest:g}x" / f"ckpt_branch{steps[m]}.pt"))
              for m in MULTIPLES if m < longest}
    out = [{**points[m].result(), "multiple": m} for m in sorted(points)] + [{**long, "multiple": longest}]
    for r in out:
        r["family"] = family
    return out


def curves_of_seed(args, lanes: Lanes, outer, seed: int, best: dict) -> list[dict]:
    rec, out = recipe(args), []
    first = rec["progressive"][0]
    runs = curve(args, lanes.chain, "independent", first, *best[("independent", first["size"])], seed)
    out += runs + [{**r, "family": "progressive"} for r in runs]
    # the independent members do not wait for each other, nor for the chain
    indep = [outer.submit(curve, args, lanes.independent, "independent", s, *best[("independent", s["size"])], seed)
             for s in reversed(rec["independent"][1:])]  # the largest first: the member that matters most
    src = next(r["ckpt"] for r in runs if r["multiple"] == 1.0)
    for stage in rec["progressive"][1:]:
        runs = curve(args, lanes.chain, "progressive", stage, *best[("progressive", stage["size"])], seed,
                     grow(args, src, stage["size"], seed))
        out += runs
        src = next(r["ckpt"] for r in runs if r["multiple"] == 1.0)
    for f in indep:
        out += f.result()
    return out


def curves(args) -> list[dict]:
    best = chosen(args)
    with Lanes(args.jobs) as lanes, cf.ThreadPoolExecutor(32) as outer:
        per_seed = [outer.submit(curves_of_seed, args, lanes, outer, s, best) for s in args.seeds]
        out = [r for f in per_seed for r in f.result()]
    print(f"{len(out)} curve runs done in {args.out}; `collect` gathers them from their folders")
    return out


# ---------------------------------------------------------------------------------------------
# frontier: the progressive family on smaller budgets, at the plan's settings

def frontier_knobs(args) -> dict:
    """The growth's knobs that differ from the family's: {aki_top: "below", noise: x, rewarmup: f}."""
    return {**({"aki_top": "below"} if args.aki_top == "below" else {}),
            **({"noise": args.noise} if args.noise is not None else {}),
            **({"rewarmup": args.rewarmup} if args.rewarmup is not None else {})}


def knob_suffix(knobs: dict) -> str:
    return "".join("_below" if k == "aki_top" else f"_{k}{v:g}" for k, v in knobs.items())


def variant_name(budget_scale: float, grow_from: str, shrink: str = "all", knobs: dict | None = None) -> str:
    return f"scale{budget_scale:g}" + ("_last" if shrink == "last" else "") + \
        ("_stable" if grow_from == "stable" else "") + knob_suffix(knobs or {})


def lineage(args, pool, seed: int, budget_scale: float, grow_from: str, shrink: str = "all") -> list[dict]:
    """The progressive chain of one seed with its grown stages scaled. Growing from final weights,
    the stages it shares with the plan are the curves' runs: the smallest member, or
    (shrink="last") every member but the largest. Growing from the weights before the decay, every
    stage is its own, the smallest too: train.py --stable_ckpt writes them, counting the whole
    stage's FLOPs in the lineage (the member still finishes its decay, and the family pays for it).
    With the frontier's knobs (--aki_top, --noise, --rewarmup) every growth uses them: the lineage
    shares only the smallest member with the curves."""
    if shrink == "last" and grow_from == "stable":
        raise UserError("--shrink last reuses the curves' stages, which grew from final weights: use --grow_from final")
    stages = recipe(args, budget_scale, shrink)["progressive"]
    start, src = -1, None  # stable: from scratch
    knobs = frontier_knobs(args)
    if grow_from == "final":  # the last stage shared with the curves (with knobs: only the smallest member)
        start = 0 if shrink == "all" or knobs else len(stages) - 2
        src = run_dir(Path(args.out) / "curves", "independent" if start == 0 else "progressive", stages[start]["size"],
                      seed, stages[start]["lr"], MIN_LR_RATIOS[0], "1x") / "ckpt.pt"
        if not src.exists():
            raise UserError(f"{src} is missing: run `experiments/equal_loss.py curves --settings plan --seeds {seed}` "
                            f"first")
    out, name = [], variant_name(budget_scale, grow_from, shrink, knobs)
    for i, stage in enumerate(stages[start + 1:], start + 1):
        d = run_dir(Path(args.out) / "frontier" / name, "progressive", stage["size"], seed, stage["lr"],
                    MIN_LR_RATIOS[0], "1x")
        stable = d / "ckpt_stable.pt" if grow_from == "stable" and i < len(stages) - 1 else None
        warmup = round(knobs["rewarmup"] * stage["steps"]) if i > 0 and "rewarmup" in knobs else stage["warmup"]
        r = pool.submit(train, args, d, stage["size"], stage["steps"], warmup, stage["lr"], MIN_LR_RATIOS[0],
                        seed, stage["batch"], grow(args, str(src), stage["size"], seed, knobs) if src else "",
                        stable_ckpt=str(stable or "")).result()
        if i > 0:  # the grown members
            out.append({**r, "variant": name})
        src = stable or d / "ckpt.pt"
    return out


def frontier(args) -> list[dict]:
    pool, outer = pools(args)
    with pool, outer:
        runs = [outer.submit(lineage, args, pool, seed, s, args.grow_from, args.shrink)
                for s in args.budget_scales for seed in args.seeds]
        out = [r for f in runs for r in f.result()]
    for s in args.budget_scales if args.shrink == "last" else []:
        print(f"budget scale {s:g}, last stage only, as run_family.sh: BUDGET_SCALE={s:g} STAGE_FRACTIONS="
              + ",".join(f"{w:.6g}" for w in last_stage_fractions(args, s)))
    print(f"{len(out)} frontier runs done in {args.out}; `collect` gathers them from their folders")
    return out


RUN_NAME = re.compile(r"(?P<size>.+)_lr(?P<lr>[^_]+)_min(?P<ratio>[^_]+)$")  # run_dir's folder name
VARIANT = re.compile(r"scale(?P<scale>[^_]+)(?P<last>_last)?(?P<stable>_stable)?(?P<knobs>(_[a-z]+[^_]*)*)$")  # variant_name's
KNOB = re.compile(r"_(?P<name>below|noise|rewarmup)(?P<value>[^_]*)")  # knob_suffix's


def knobs_text(knobs: dict) -> str:
    """The knobs as a reader says them: "AKI's top block from below, noise 0.3, re-warmup 15% of steps"."""
    say = {"aki_top": lambda v: "AKI's top block from below", "noise": lambda v: f"noise {v:g}",
           "rewarmup": lambda v: f"re-warmup {100 * v:g}% of steps"}
    return ", ".join(say[k](v) for k, v in knobs.items())


def parse_knobs(suffix: str) -> dict:
    return {("aki_top" if m["name"] == "below" else m["name"]): ("below" if m["name"] == "below" else float(m["value"]))
            for m in KNOB.finditer(suffix)}


def finished_runs(out: Path, rec: dict, kind: str) -> list[dict]:
    """Every complete run under out/kind (curves, sweep or frontier/VARIANT), read from its folder,
    while the phase that makes them may still be going."""
    runs = []
    for d in sorted((out / kind).glob("seed_*/*/*/*x")):  # seed_N/family/SIZE_lrLR_minRATIO/Mx
        name, family = RUN_NAME.match(d.parent.name), d.parent.parent.name
        stage = next((st for st in rec.get(family, []) if st["size"] == name["size"]), None) if name else None
        if stage is None:
            continue
        multiple = float(d.name[:-1])
        lr, ratio = float(name["lr"]), float(name["ratio"])
        r = {"family": family, "size": name["size"], "seed": int(d.parent.parent.parent.name[5:]), "lr": lr, "dir": str(d),
             "min_lr_ratio": ratio, "multiple": multiple, "steps": round(multiple * stage["steps"]),
             # the plan's settings, or the sweep's best
             "settings": "plan" if (name["lr"], ratio) == (f"{stage['lr']:.3g}", MIN_LR_RATIOS[0]) else "sweep"}
        r.update(read_run(d, r["steps"]))
        if r["ok"]:
            runs.append(r)
            if kind == "curves" and family == "independent" and stage == rec["independent"][0]:
                runs.append({**r, "family": "progressive"})  # the smallest member: one run for both
    return runs


def collect(args):
    """The compact results of every finished sweep and curve run (no checkpoints), for RESULTS.md."""
    out, rec = Path(args.out), recipe(args)
    keep = ("family", "size", "seed", "settings", "lr", "min_lr_ratio", "steps", "multiple", "val_loss",
            "flops", "flops_total", "curve")
    slim = lambda r: {k: r[k] for k in keep if k in r}  # noqa: E731
    sweep_runs, curves = {}, finished_runs(out, rec, "curves")
    frontier_runs = []
    for d in sorted((out / "frontier").glob("scale*")):
        v = VARIANT.match(d.name)
        scale, grow_from, shrink = float(v["scale"]), "stable" if v["stable"] else "final", "last" if v["last"] else "all"
        knobs, runs = parse_knobs(v["knobs"]), finished_runs(out, recipe(args, scale, shrink), f"frontier/{d.name}")
        if any(r["size"] == rec["progressive"][-1]["size"] for r in runs):  # a variant of this family's largest
            frontier_runs += [{**slim(r), "budget_scale": scale, "grow_from": grow_from, "shrink": shrink,
                               **({"knobs": knobs} if knobs else {})} for r in runs]
    # a curve's 1x point at the plan's settings is the sweep's run at that LR, bit for bit (a branch
    # equals the run planned to end there): seed 1's counts as that sweep point
    planned = [r for r in curves if r["seed"] == 1 and r["multiple"] == 1.0 and r["settings"] == "plan"
               and not (r["family"] == "progressive" and r["size"] == rec["progressive"][0]["size"])]
    for r in finished_runs(out, rec, "sweep") + planned:
        runs = sweep_runs.setdefault((r["family"], r["size"]), [])
        if all((x["lr"], x["min_lr_ratio"]) != (r["lr"], r["min_lr_ratio"]) for x in runs):
            runs.append(slim({**r, "multiple": 1.0}))
    result = {"recipe": rec, "family": args.family, "chinchilla": args.chinchilla,
              "eval_tokens": args.eval_tokens, "data": os.path.basename(args.data.rstrip("/")),
              "sweep": [{"family": f, "size": z, "runs": sorted(runs, key=lambda r: (r["min_lr_ratio"], r["lr"]))}
                        for (f, z), runs in sweep_runs.items()],
              "curves": [slim(r) for r in curves], "frontier": frontier_runs}
    write_json(args.results, result)
    print(f"wrote {args.results}: {len(result['sweep'])} sweeps, {len(result['curves'])} curve runs")


# ---------------------------------------------------------------------------------------------
# The saving at equal loss, from collect's JSON

def crossing(points: list[tuple[float, float]], target: float) -> tuple[str, float]:
    """The compute at which a curve of (FLOPs, final loss) points, one per budget, first reaches
    `target`, interpolated linearly in log FLOPs between the two budgets around the crossing:
    ("=", C); ("<=", C of the first point) when that one is already there; (">", C of the last
    point) when none is."""
    points = sorted(points)
    if points[0][1] <= target:
        return "<=", points[0][0]
    for (c0, l0), (c1, l1) in zip(points, points[1:]):
        if l1 <= target:
            t = (l0 - target) / (l0 - l1)
            return "=", math.exp(math.log(c0) + t * (math.log(c1) - math.log(c0)))
    return ">", points[-1][0]


def interpolate(points: list[tuple[float, float]], x: float) -> float | None:
    """y at x on a curve of (x, y) points, linear in log x; None outside the points."""
    points = sorted(points)
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 <= x <= x1:
            return y0 + (math.log(x) - math.log(x0)) / (math.log(x1) - math.log(x0)) * (y1 - y0)
    return None


FLIP = {"=": "=", "<=": ">=", ">": "<"}  # a bound on the compute, as a bound on 1 - compute / cost


def member_savings(prog: dict, ind: dict) -> dict:
    """One member, one seed; prog/ind: {multiple: run}. (a) the compute at which the progressive
    member (its lineage included) first reaches the independent member's final loss, as a saving
    against the independent member's cost; (b) the compute the independent member needs to reach the
    progressive member's final loss, against which the progressive member's cost is a saving."""
    curve = lambda runs: [(r["flops_total"], r["val_loss"]) for r in runs.values()]  # noqa: E731
    p1, i1 = prog[1.0], ind[1.0]
    how_a, c_a = crossing(curve(prog), i1["val_loss"])
    how_b, c_b = crossing(curve(ind), p1["val_loss"])
    return {"loss_progressive": p1["val_loss"], "loss_independent": i1["val_loss"],
            "cost_progressive": p1["flops_total"], "cost_independent": i1["flops_total"],
            "a": (FLIP[how_a], 1 - c_a / i1["flops_total"]), "compute_a": c_a,
            # 1 - cost / c grows with c: a bound on c is the same bound on the saving
            "b": (how_b, 1 - p1["flops_total"] / c_b), "compute_b": c_b}


def curve_settings(results: dict) -> str:
    """The curves to report: with the sweep's settings where there are any, else the plan's."""
    return next((k for k in ("sweep", "plan") if any(r.get("settings") == k for r in results["curves"])), "sweep")


def by_seed(results: dict, settings: str) -> dict:
    """{seed: {family: {size: {multiple: run}}}} from collect's curves with these settings."""
    out = {}
    for r in (r for r in results["curves"] if r.get("settings", "sweep") == settings):
        out.setdefault(r["seed"], {}).setdefault(r["family"], {}).setdefault(r["size"], {})[r["multiple"]] = r
    return out


def family_savings(seed_runs: dict, sizes: list[str]) -> dict:
    """The whole family, one seed. (b): the progressive family's cost (its largest member's lineage)
    against what independent training needs to reach every progressive member's final loss. (a): the
    compute at which the progressive lineage's largest member reaches its independent counterpart's
    loss, against the independent family's cost; it holds only when every smaller progressive
    member, at its planned budget, is already at or below its counterpart's loss ("holds")."""
    prog, ind = seed_runs["progressive"], seed_runs["independent"]
    needs, bounds = 0.0, set()
    for s in sizes:
        how, c = crossing([(r["flops_total"], r["val_loss"]) for r in ind[s].values()], prog[s][1.0]["val_loss"])
        needs += c
        bounds |= {how} - {"="}
    cost = prog[sizes[-1]][1.0]["flops_total"]
    largest = member_savings(prog[sizes[-1]], ind[sizes[-1]])
    indep_cost = sum(ind[s][1.0]["flops_total"] for s in sizes)
    bound = bounds.pop() if len(bounds) == 1 else "=" if not bounds else "?"  # "?": bounds both ways
    return {"b": (bound, 1 - cost / needs), "cost_progressive": cost,
            "independent_needs": needs, "independent_cost": indep_cost,
            "a": (largest["a"][0], 1 - largest["compute_a"] / indep_cost),
            "holds": all(prog[s][1.0]["val_loss"] <= ind[s][1.0]["val_loss"] for s in sizes[:-1])}


def token_matched(seed_runs: dict, recipe_: dict, size: str) -> dict:
    """The independent member trained on as many tokens as the progressive lineage saw (its curve,
    interpolated), against the progressive member: is the edge the growth or the extra tokens?"""
    prog_steps = 0
    for st in recipe_["progressive"]:
        prog_steps += st["steps"]
        if st["size"] == size:
            break
    ind_steps = next(st["steps"] for st in recipe_["independent"] if st["size"] == size)
    m = prog_steps / ind_steps  # same batch and sequence length in every stage
    ind = seed_runs["independent"][size]
    return {"multiple": m, "loss_independent": interpolate([(k, r["val_loss"]) for k, r in ind.items()], m),
            "loss_progressive": seed_runs["progressive"][size][1.0]["val_loss"]}


def saving_by_budget(prog: dict, ind: dict) -> dict:
    """{multiple: (a)} for one member and seed: the saving at equal loss when the independent member
    trains m x its budget (10 x m tokens per parameter at 0.5 Chinchilla, ...): the compute at which
    the progressive curve reaches that loss, against the independent member's compute."""
    curve = [(r["flops_total"], r["val_loss"]) for r in prog.values()]
    out = {}
    for m, r in sorted(ind.items()):
        how, c = crossing(curve, r["val_loss"])
        out[m] = (FLIP[how], 1 - c / r["flops_total"])
    return out


def _fmt(bound: tuple[str, float]) -> str:
    how, x = bound
    return ("" if how == "=" else {"<=": "≤ ", ">=": "≥ ", "<": "< ", ">": "> ", "?": "~"}[how]) + f"{100 * x:.1f}%"


def _mean_spread(xs: list[float], scale=100.0, fmt="{:.1f}") -> str:
    """The convention of every table here: the mean over seeds ± half their range."""
    xs = [scale * x for x in xs]
    mean = sum(xs) / len(xs)
    return fmt.format(mean) + ("" if len(xs) == 1 else " ± " + fmt.format((max(xs) - min(xs)) / 2))


def tuned_baseline(results: dict, seeds: dict, sizes: list[str]) -> list[list[str]]:
    """(a) against the best independent member of the sweep (seed 1, its planned budget): rows of
    member, best setting, its loss, the curves' independent loss, the progressive loss, (a), and the
    best progressive stage of the sweep (each grown from the best stage before it) against it."""
    rows = []
    best_progressive = {sw["size"]: min(sw["runs"], key=lambda r: r["val_loss"])
                        for sw in results["sweep"] if sw["family"] == "progressive"}
    for sw in sorted(results["sweep"], key=lambda sw: sizes.index(sw["size"])):
        z = sw["size"]
        if sw["family"] != "independent" or z == sizes[0] or len(seeds.get(1, {}).get("progressive", {}).get(z, {})) \
                != len(MULTIPLES) or 1.0 not in seeds[1].get("independent", {}).get(z, {}):
            continue
        best = min(sw["runs"], key=lambda r: r["val_loss"])
        prog, ind = seeds[1]["progressive"][z], seeds[1]["independent"][z][1.0]
        how, c = crossing([(r["flops_total"], r["val_loss"]) for r in prog.values()], best["val_loss"])
        lrs = sorted({r["lr"] for r in sw["runs"]})
        bracketed = lrs[0] < best["lr"] < lrs[-1]
        rows.append([z, f"{len(lrs)}, " + ("bracketed" if bracketed else "**not bracketed**"),
                     f"{best['lr']:.3g}" + ("/0" if best["min_lr_ratio"] == 0 else ""), f"{best['val_loss']:.3f}",
                     f"{ind['val_loss']:.3f}", f"{prog[1.0]['val_loss']:.3f}",
                     _fmt((FLIP[how], 1 - c / ind["flops_total"]))] + (
            [f"{best_progressive[z]['lr']:.3g}" + ("/0" if best_progressive[z]["min_lr_ratio"] == 0 else ""),
             f"{best_progressive[z]['val_loss']:.3f}", f"{best_progressive[z]['val_loss'] - best['val_loss']:+.3f}"]
            if z in best_progressive else ["", "", ""]))
    return rows


def frontier_rows(results: dict) -> tuple[list[list[str]], str]:
    """Item 4 of the frontier: per variant (budget scale, grow from, shrink, knobs), the family's saving and
    each grown member's final loss minus its independent counterpart's (same seed, planned budget),
    with the plan's own family (the curves' 1x points) as the first row; and the verdict: the
    smallest budget at which every member is at or below its counterpart in every seed."""
    plan_seeds = by_seed(results, "plan")
    sizes = [st["size"] for st in results["recipe"]["progressive"]]
    planned = {s: {z: runs[z][1.0] for z in sizes[1:] if 1.0 in runs.get(z, {})}
               for s, runs in ((s, r.get("progressive", {})) for s, r in plan_seeds.items())}
    variants = {(1.0, "final", "all", ""): planned}
    for r in (r for r in results.get("frontier", []) if r["size"] in sizes[1:]):  # the grown members
        v = variants.setdefault((r["budget_scale"], r["grow_from"], r.get("shrink", "all"),
                                 knobs_text(r.get("knobs", {}))), {})
        if r.get("shrink") == "last" and not r.get("knobs"):  # the members before the last: the curves' runs
            v.setdefault(r["seed"], {z: x for z, x in planned.get(r["seed"], {}).items() if z != sizes[-1]})
        v.setdefault(r["seed"], {})[r["size"]] = r
    rows, ok = [], []
    for (scale, grow_from, shrink, knobs), by_seed_ in sorted(variants.items(), key=lambda kv: (-kv[0][0], kv[0][1:])):
        seeds = sorted(s for s, m in by_seed_.items() if len(m) == len(sizes) - 1
                       and all(1.0 in plan_seeds.get(s, {}).get("independent", {}).get(z, {}) for z in sizes))
        if not seeds:
            continue
        ind = {s: {z: plan_seeds[s]["independent"][z][1.0] for z in sizes} for s in seeds}
        saving = f"{100 * statistics.mean(1 - by_seed_[s][sizes[-1]]['flops_total'] / sum(r['flops_total'] for r in ind[s].values()) for s in seeds):.1f}"
        cells, every = [], True
        for z in sizes[1:]:
            gaps = [by_seed_[s][z]["val_loss"] - ind[s][z]["val_loss"] for s in seeds]
            below = sum(g <= 0 for g in gaps)
            every &= below == len(gaps)
            cells.append(f"{_mean_spread(gaps, 1, '{:.3f}')} ({below}/{len(gaps)} ≤ 0)")
        # the largest member against the plan's own, same seeds: what the variant changes, seed noise aside
        cells.append(_mean_spread([by_seed_[s][sizes[-1]]["val_loss"] - planned[s][sizes[-1]]["val_loss"]
                                   for s in seeds], 1, "{:.3f}"))
        what = ("none, the plan" if grow_from == "final" and not knobs else "none") if (scale, shrink) == (1.0, "all") \
            else "the last stage" if shrink == "last" else "every grown stage"
        what += (", grown from pre-decay weights" if grow_from == "stable" else "") + (f"; {knobs}" if knobs else "")
        if every and len(seeds) >= 3:
            ok.append((saving, scale, what))
        rows.append([f"{scale:g}", what, saving] + cells + ["yes" if every else "no",
                                                                             ", ".join(map(str, seeds))])
    best = min(ok, key=lambda x: x[1]) if ok else None
    verdict = (f"The smallest family budget at which every member ends at or below its independent counterpart "
               f"in each of 3 or more seeds: {best[1]:g}× the largest member alone (stages shortened: {best[2]}), a "
               f"{best[0]}% saving of FLOPs" + ("; no smaller budget run holds in every seed." if best[1] == 1.0 else ".")
               if best else
               "No budget run has every member at or below its independent counterpart in each of 3 or more seeds.")
    return rows, verdict


def savings(results: dict) -> dict:
    """Seed by seed, from collect's JSON: each grown member's member_savings in the seeds where both
    of its curves are complete, and family_savings in the seeds where every member's are."""
    settings = curve_settings(results)
    seeds = by_seed(results, settings)
    sizes = [st["size"] for st in results["recipe"]["progressive"]]

    def done(seed, z):  # both families' curves of member z in this seed, every budget
        return all(len(seeds[seed].get(f, {}).get(z, {})) == len(MULTIPLES) for f in ("progressive", "independent"))
    by_member = {z: sorted(s for s in seeds if done(s, z)) for z in sizes[1:]}
    complete = sorted(s for s in seeds if all(done(s, z) for z in sizes))
    return {"settings": settings, "seeds": seeds, "sizes": sizes, "by_member": by_member, "complete": complete,
            "members": {z: [member_savings(seeds[s]["progressive"][z], seeds[s]["independent"][z]) for s in ss]
                        for z, ss in by_member.items() if ss},
            "family": [family_savings(seeds[s], sizes) for s in complete]}


def savings_rows(sv: dict) -> list[list[str]]:
    """The saving table's rows: each member with its final losses, (a) and (b) as mean ± half the range
    (or "see seeds" where a seed has only a bound), then per seed, then the family."""
    rows = []
    for z, ms in sv["members"].items():
        exact = lambda key: all(m[key][0] == "=" for m in ms)  # noqa: E731
        rows.append([z, _mean_spread([m["loss_progressive"] for m in ms], 1, "{:.3f}"),
                     _mean_spread([m["loss_independent"] for m in ms], 1, "{:.3f}"),
                     _mean_spread([m["a"][1] for m in ms]) if exact("a") else "see seeds",
                     _mean_spread([m["b"][1] for m in ms]) if exact("b") else "see seeds",
                     ", ".join(_fmt(m["a"]) for m in ms), ", ".join(_fmt(m["b"]) for m in ms),
                     ", ".join(map(str, sv["by_member"][z]))])
    fs = sv["family"]
    if fs:
        rows.append(["family", "", "", _mean_spread([f["a"][1] for f in fs]) if all(f["a"][0] == "=" for f in fs)
                     else "see seeds", _mean_spread([f["b"][1] for f in fs]) if all(f["b"][0] == "=" for f in fs)
                     else "see seeds", ", ".join(_fmt(f["a"]) + ("" if f["holds"] else " (†)") for f in fs),
                     ", ".join(_fmt(f["b"]) for f in fs), ", ".join(map(str, sv["complete"]))])
    return rows


def token_matched_text(sv: dict, recipe_: dict) -> str:
    """The token-matched control of the largest member, seed by seed, as a sentence ("" before any seed)."""
    largest = sv["sizes"][-1]
    ss = sv["by_member"][largest]
    tm = [token_matched(sv["seeds"][s], recipe_, largest) for s in ss]
    return "" if not tm else (
        f"the progressive {largest}'s lineage saw {tm[0]['multiple']:.2f}× the tokens of its independent "
        f"counterpart's budget. The independent {largest} at that many tokens (its curve, interpolated): "
        + ", ".join(f"{t['loss_independent']:.3f}" for t in tm) + f" against the progressive {largest}'s "
        + ", ".join(f"{t['loss_progressive']:.3f}" for t in tm)
        + f" (seed{'s' if len(ss) > 1 else ''} {', '.join(map(str, ss))}).")


def by_budget_rows(sv: dict) -> list[list[str]]:
    """Each grown member's (a) against the independent member at every budget of its curve: the mean ±
    half the range where every seed crosses inside the budgets run, else each seed."""
    rows = []
    for z in (z for z in sv["sizes"][1:] if sv["by_member"][z]):
        per_seed = [saving_by_budget(sv["seeds"][s]["progressive"][z], sv["seeds"][s]["independent"][z])
                    for s in sv["by_member"][z]]
        rows.append([z] + [_mean_spread([p[m][1] for p in per_seed]) if all(p[m][0] == "=" for p in per_seed)
                           else ", ".join(_fmt(p[m]) for p in per_seed) for m in MULTIPLES]
                    + [", ".join(map(str, sv["by_member"][z]))])
    return rows


SAVINGS_HEADER = ["final loss, progressive", "final loss, independent", "(a) saving to reach the independent loss",
                  "(b) saving against the independent compute for the progressive loss", "(a) per seed",
                  "(b) per seed", "seeds"]
DAGGER = ("(†) in that seed a smaller progressive member ended above its independent counterpart at its "
          "planned budget, so (a) for the family is only the largest member's.")


def tables(results: dict) -> str:
    """The measured section: savings per member and for the family, seed by seed, the token-matched
    control, the tuned baseline and the LR sweep."""
    from util import md_table
    sv = savings(results)
    settings, seeds, sizes, fs = sv["settings"], sv["seeds"], sv["sizes"], sv["family"]
    if not sv["members"]:
        raise UserError("no grown member has both curves complete; run `experiments/equal_loss.py curves` first")
    tpp = 20 * results.get("chinchilla", 1.0)  # tokens per parameter at a member's planned budget
    out = [f"Max LR and final LR: {'the LR sweep' + chr(39) + 's best' if settings == 'sweep' else 'the family plan (flops.py, adjusted LR, final LR lr/10)'}. "
           f"Mean ± half the range over the seeds in the last column; the per-seed columns list those seeds "
           f"in that order. A bound (≥, ≤, >, <) means the crossing lies outside the budgets run "
           f"({MULTIPLES[0]:g}× to {MULTIPLES[-1]:g}× of each member's planned budget)."
           + ("" if fs else " The family row needs every member's curves in a seed: none is complete yet."), "",
           md_table(["member"] + SAVINGS_HEADER, savings_rows(sv)), ""]
    if not all(f["holds"] for f in fs):
        out += [DAGGER, ""]
    tm = token_matched_text(sv, results["recipe"])
    out += [f"Token-matched control: {tm}", ""] if tm else []
    out += ["Does the saving shrink as the independent member trains longer? (a) against the independent member at "
            f"each budget of its curve ({tpp:g} tokens per parameter × the multiple), the progressive curve as above "
            "(its last stage longer, the stages before it as planned). Percent; mean ± half the range, or "
            "each seed where a crossing lies outside the budgets run.", "",
            md_table(["member"] + [f"{m:g}× ({tpp * m:g} tok/param)" for m in MULTIPLES] + ["seeds"],
                     by_budget_rows(sv)), ""]
    tuned = tuned_baseline(results, seeds, sizes) if settings == "plan" else []
    if tuned:
        out += ["Against the tuned baseline (seed 1): (a) with the target the best independent member of the LR "
                "sweep below reaches at its planned budget, the same cost as the curves' 1× point; and best against "
                "best: the progressive stage's own sweep (each stage grown from the best stage before it).", "",
                md_table(["member", "max LRs tried", "best max LR", "tuned independent loss", "independent loss, plan's LR",
                          "progressive loss", "(a) against the tuned loss", "progressive: best max LR of its sweep",
                          "tuned progressive loss", "tuned progressive − tuned independent"], tuned), ""]
    frontier_, verdict = frontier_rows(results)
    if len(frontier_) > 1:
        out += ["The frontier: the progressive family on smaller budgets (every grown stage's tokens scaled so "
                "that the family costs the given multiple of its largest member trained alone; plan settings, "
                "WSD). Each member's final loss minus its independent counterpart's at its planned budget, same "
                "seed; the first row is the plan's own family.", "",
                md_table(["family budget (× largest alone)", "stages shortened", "saving of FLOPs (%)"]
                         + [f"{z}: progressive − independent" for z in sizes[1:]]
                         + [f"{sizes[-1]}: − the plan's {sizes[-1]}, same seeds",
                            "every member ≤ independent in every seed", "seeds"], frontier_), "", verdict, ""]
    out += ["LR sweep (seed 1, each member at its planned budget, WSD, final LR lr/10 unless marked /0; the "
            "chosen setting in bold):", ""]
    rows = []
    for sw in sorted(results["sweep"], key=lambda sw: (sw["family"] != "independent", sizes.index(sw["size"]))):
        best = min(sw["runs"], key=lambda r: r["val_loss"])
        cells = []
        for r in sorted(sw["runs"], key=lambda r: (r["min_lr_ratio"] == 0, r["lr"])):
            c = f"{r['lr']:.3g}{'/0' if r['min_lr_ratio'] == 0 else ''}: {r['val_loss']:.3f}"
            cells.append(f"**{c}**" if r is best else c)
        rows.append([sw["family"], sw["size"], ", ".join(cells)])
    out += [md_table(["family", "member", "max LR: final val loss"], rows)]
    return "\n".join(out)


def finish_figure(plt, fig, first_ax, ylabel: str, path):
    """The y label and legend on the first panel, then the PNG (both figures of this file)."""
    first_ax.set_ylabel(ylabel)
    first_ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def setting_name(results: dict) -> str:
    """A collect JSON's setting: its family and its members' tokens per parameter at their budgets."""
    return f"{results['family']}, {20 * results.get('chinchilla', 1.0):g} tok/param"


def trend(all_results: list[dict]) -> str:
    """Does the saving hold as members grow and as they train on more tokens per parameter? The member
    and family rows of every collected setting (a family and its Chinchilla multiple) in one table,
    each setting's token-matched control, and (a) against longer-trained independent members."""
    from util import md_table
    rows, budget_rows, matched, shown = [], [], [], set()
    for results in sorted(all_results, key=lambda r: (r.get("chinchilla", 1.0), len(r["recipe"]["progressive"]))):
        sv, name = savings(results), setting_name(results)
        for row in savings_rows(sv):
            key = (results.get("chinchilla", 1.0), *row)  # a member two families share: the same runs, once
            if row[0] == "family" or key not in shown:
                rows.append([name] + row)
            shown.add(key)
        for row in by_budget_rows(sv):
            key = (results.get("chinchilla", 1.0), "by budget", *row)
            if key not in shown:
                budget_rows.append([name] + row)
            shown.add(key)
        tm = token_matched_text(sv, results["recipe"])
        matched += [f"- {name}: {tm}"] if tm else []
    return "\n".join([
        "The saving at equal loss in every setting collected: each family at its planned budgets (plan settings, "
        "WSD), its members' curves from 0.5× to 2× their budgets. Mean ± half the range over the seeds in the "
        "last column; a bound (≥, ≤, >, <) means the crossing lies outside the budgets run. A member that a "
        "larger family shares at the same tokens per parameter (the same runs) is listed once, under the "
        "smaller family.", "", md_table(["setting", "member"] + SAVINGS_HEADER, rows)]
        + (["", DAGGER] if any("(†)" in row[-3] for row in rows) else [])
        + ["", "Token-matched control, each setting's largest member:", ""] + matched
        + ["", "(a) against the independent member trained to each multiple of its planned budget (its tokens per "
           "parameter: the setting's × the multiple), the progressive curve as above. Percent; mean ± half the "
           "range, or each seed where a crossing lies outside the budgets run.", "",
           md_table(["setting", "member"] + [f"{m:g}×" for m in MULTIPLES] + ["seeds"], budget_rows)])


def plot_trend(all_results: list[dict], path):
    """(a) and (b) per member against member size, one line per setting: each seed a dot (an open
    triangle where it is only a bound), the line through the mean of the seeds measured exactly."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    order = [st["size"] for st in max((r["recipe"]["progressive"] for r in all_results), key=len)]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    settings = sorted(all_results, key=lambda r: (r.get("chinchilla", 1.0), len(r["recipe"]["progressive"])))
    for ax, key, title in zip(axes, "ab", ("(a) compute to reach the independent loss",
                                           "(b) against the independent compute for the progressive loss")):
        for i, results in enumerate(settings):
            color, line = f"C{i}", []
            for z, ms in savings(results)["members"].items():
                x = order.index(z) + 0.08 * (i - 1)  # settings side by side at each member
                for m in ms:
                    how, y = m[key]
                    ax.plot(x, 100 * y, "o" if how == "=" else "^" if ">" in how else "v", color=color, alpha=0.6,
                            ms=5, mfc=color if how == "=" else "none")
                exact = [m[key][1] for m in ms if m[key][0] == "="]
                if exact:
                    line.append((x, 100 * statistics.mean(exact)))
            if line:
                ax.plot(*zip(*line), "-", color=color, label=setting_name(results))
        ax.axhline(0, color="gray", lw=0.8)
        ax.set_xticks(range(len(order)), order)
        ax.set_xlabel("member")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    finish_figure(plt, fig, axes[0], "saving at equal loss (%)", path)


def plot(results: dict, path):
    """Final loss against FLOPs (lineage included) at every budget, both families, one panel a member."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    seeds = by_seed(results, curve_settings(results))
    sizes = [st["size"] for st in results["recipe"]["progressive"]][1:]
    fig, axes = plt.subplots(1, len(sizes), figsize=(4.2 * len(sizes), 3.6))
    for ax, z in zip(axes, sizes):
        for fam, color in (("progressive", "tab:blue"), ("independent", "tab:orange")):
            for i, (seed, runs) in enumerate(sorted(seeds.items())):
                pts = sorted((r["flops_total"], r["val_loss"]) for r in runs.get(fam, {}).get(z, {}).values())
                if pts:
                    ax.plot(*zip(*pts), "o-", color=color, alpha=0.7, ms=3,
                            label=fam if i == 0 else None)
                    one = runs[fam][z].get(1.0)
                    if one:
                        ax.plot(one["flops_total"], one["val_loss"], "s", color=color, ms=6)
        ax.set_xscale("log")
        ax.set_title(f"{z}: final loss at 0.5–2× its budget")
        ax.set_xlabel("training FLOPs (progressive: lineage included)")
        ax.grid(alpha=0.3)
    finish_figure(plt, fig, axes[0], "final val loss (nats/byte)", path)


def main(argv=None):
    args = parse_args(argv)
    if not (Path(args.data) / "meta.json").exists():
        raise UserError(f"{args.data} is not a prepared data folder; run data/prepare.py (as run_family.sh does)")
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # --jobs runs side by side, one core each
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    {"sweep": sweep, "curves": curves, "frontier": frontier, "collect": collect}[args.phase](args)


if __name__ == "__main__":
    run_cli(main)
