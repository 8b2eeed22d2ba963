"""
What run_family.sh runs, spelled out in one place: run_family.sh says in what order the family is
planned, grown, trained and evaluated; this file says what each step is. It checks every setting,
gives each stage its ready train.py or expand.py command (the plan's tokens and recipe from flops.py,
the memory plan's micro-batch, accumulation and strategy from parallel.py), the progress line before
each stage and the verdict at the end.

    python family.py settings [--name value ...]   # every setting checked, as shell assignments
    python family.py options                       # what each setting is (run_family.sh --help)
    python family.py plan | check                  # plan.json and its table | every stage fits the GPUs
    python family.py grow SEED SIZE                # the expand.py command that grows SIZE's predecessor
    python family.py stage SEED KIND SIZE          # a stage: what it trains, its layout, its train.py command
    python family.py progress STARTED FLOPS_BEFORE [LABEL]   # the progress line (no LABEL: FLOPs so far)
    python family.py verdict REPORT_DIR            # the verdict of a report

Every command but `settings` reads the settings from the environment, as run_family.sh exports them.
"""
import json
import os
import re
import shlex
import sys
import time
from pathlib import Path

from util import UserError, read_jsonl, run_cli

# The options of run_family.sh, as environment variables or flags (--name value, lower case, '-' or
# '_'): name -> (default, what it is). QUICK=1 changes the defaults of QUICK_DEFAULTS.
OPTIONS = {
    "FAMILY": ("tiny", "a family of model.py: tiny, tiny5, paper, gpt2, tiny-llama, llama, ... (flops.py --presets)"),
    "CHINCHILLA": ("1", "tokens per parameter, as a multiple of Chinchilla's 20"),
    "LR_SCHEDULE": ("adjusted", "adjusted: max LR from the smallest's to the largest's; fixed: the smallest's"),
    "SEED": ("1337", "the seed of a one-seed run"),
    "SEEDS": ("", "several seeds, e.g. \"1 2 3\": one family each, and a report over them"),
    "METHOD": ("aki", "expand.py --method: aki or fpi"),
    "DEPTH": ("stack", "expand.py --depth: stack, interpolate or zero"),
    "NOISE": ("0.1", "expand.py --noise (0: copies split exactly)"),
    "AKI_TOP": ("noise", "expand.py --aki_top: noise or below"),
    "OPT_STATE": ("0", "1: grow the AdamW moments too (expand.py --optimizer_state)"),
    "MEMBERS": ("", "a sub-chain, e.g. 20k,250k (default: the whole family)"),
    "SCHEDULE": ("", "train.py --schedule: cosine or wsd (default: the recipe's, flops.py: cosine)"),
    "GROW_FROM": ("final", "stable (wsd): grow each member from its predecessor's weights before the decay"),
    "STAGE_FRACTIONS": ("", "split of the budget among the grown stages, e.g. 1,1,2"),
    "BUDGET_SCALE": ("1", "the progressive budget in multiples of the largest member's FLOPs"),
    "NPROC": ("1", "processes (GPUs) per stage; torchrun when > 1"),
    "GPU_MEM": ("80", "GB of memory per GPU, for the memory plan"),
    "DRY_RUN": ("0", "1 (or the flag --dry-run alone): print each stage's layout and command, run nothing"),
    "DATA": ("", "a folder from data/prepare.py (default: OpenStax from ../shared, else FineWeb-Edu)"),
    "OUT": ("", "where everything goes (default: runs/<FAMILY>)"),
    "SKIP_INDEPENDENT": ("0", "1: the progressive family only"),
    "QUICK": ("0", "1: a short run, for CI (CHINCHILLA 0.05 and fewer evaluation items)"),
    "EVAL_LIMIT": ("200", "items per zero-shot task (evaluate.py --limit)"),
    "EVAL_TOKENS": ("32768", "validation tokens per evaluation during training (train.py --eval_tokens)"),
}
QUICK_DEFAULTS = {"CHINCHILLA": "0.05", "EVAL_LIMIT": "20", "EVAL_TOKENS": "8192"}
POS_INT, NUM = r"[1-9][0-9]*", r"([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?"
OPTIONS_HELP = ("Options, as environment variables or flags (--name value, the name in lower case; "
                "'-' works too):\n" + "\n".join(f"  {k:17s}{v}" + (f" (default {d})" if d else "")
                                                for k, (d, v) in OPTIONS.items()))


def parse_options(argv: list[str], env) -> dict[str, str]:
    """The options from flags, else the environment, else their defaults; nothing checked yet."""
    given = {k: env[k] for k in OPTIONS if k in env}
    argv = list(argv)
    while argv:
        arg = argv.pop(0)
        if not arg.startswith("--"):
            raise UserError(f"unknown argument '{arg}' (see bash run_family.sh --help)")
        key, eq, value = arg[2:].partition("=")
        name = key.upper().replace("-", "_")
        if name == "DRY_RUN" and not eq:  # alone: on
            value = argv.pop(0) if argv and argv[0] in ("0", "1") else "1"
        elif not eq:
            if not argv:
                raise UserError(f"{arg} needs a value")
            value = argv.pop(0)
        if name not in OPTIONS:
            raise UserError(f"unknown option --{key.lower()} (see bash run_family.sh --help)")
        given[name] = value
    quick = QUICK_DEFAULTS if given.get("QUICK") == "1" else {}
    o = {k: given.get(k, quick.get(k, default)) for k, (default, _) in OPTIONS.items()}
    o["SEEDS"] = o["SEEDS"] if "SEEDS" in given else o["SEED"]
    o["OUT"] = o["OUT"] or f"runs/{o['FAMILY']}"
    return o


def check(o: dict[str, str], shared: Path) -> dict[str, str]:
    """Every option checked before anything runs (one error line, exit 2); the settings derived from
    them: the plan's members, the data to prepare and its tokenizer, the number of training stages."""
    import expand
    import flops
    from train import TrainConfig

    def one_of(name, choices):
        if o[name] not in choices:
            raise UserError(f"{name} is one of {' '.join(choices)}, not '{o[name]}'")

    def matches(name, regex, what):
        if not re.fullmatch(regex, o[name]):
            raise UserError(f"{name} must be {what}, not '{o[name]}'")

    o["SCHEDULE"] = o["SCHEDULE"] or flops.SCHEDULE
    schedules = TrainConfig.__dataclass_fields__["schedule"].metadata["choices"]
    for name, choices in (("METHOD", expand.METHODS), ("DEPTH", expand.DEPTHS), ("AKI_TOP", expand.AKI_TOPS),
                          ("SCHEDULE", schedules), ("LR_SCHEDULE", flops.LR_SCHEDULES),
                          ("GROW_FROM", ("final", "stable"))):
        one_of(name, choices)
    if o["GROW_FROM"] == "stable" and o["SCHEDULE"] != "wsd":
        raise UserError("GROW_FROM=stable needs SCHEDULE=wsd: only WSD has a stable phase to grow from")
    for name in ("OPT_STATE", "QUICK", "SKIP_INDEPENDENT", "DRY_RUN"):
        one_of(name, ("0", "1"))
    matches("NPROC", POS_INT, "a positive integer (processes per node)")
    matches("GPU_MEM", NUM, "a number of GB per GPU")
    matches("EVAL_LIMIT", POS_INT, "a positive integer")
    matches("EVAL_TOKENS", POS_INT, "a positive integer")
    matches("NOISE", NUM, "a number >= 0")
    matches("CHINCHILLA", NUM, "a number > 0")
    matches("BUDGET_SCALE", NUM, "a number > 0")
    if o["STAGE_FRACTIONS"]:
        matches("STAGE_FRACTIONS", f"{NUM}(,{NUM})*", "comma-separated numbers")
    if not o["SEEDS"].split():
        raise UserError('SEEDS is empty: give one or more seeds, e.g. SEEDS="1 2 3"')
    seen = set()  # a seed given twice would train and count the same runs twice
    for seed in o["SEEDS"].split():
        if not re.fullmatch(r"[0-9]{1,18}", seed):
            raise UserError(f"SEEDS must be integers >= 0 of at most 18 digits, not '{seed}'")
        if int(seed) in seen:
            raise UserError(f"SEEDS lists seed {int(seed)} twice; give each seed once")
        seen.add(int(seed))
    if o["DATA"] and o["DRY_RUN"] == "0" and not Path(o["DATA"], "meta.json").is_file():
        raise UserError(f"DATA={o['DATA']} is not a folder made by data/prepare.py (no meta.json)")
    p = the_plan(o)
    batch = p["progressive"][0]["batch_size"]
    if batch % int(o["NPROC"]):
        raise UserError(f"NPROC={o['NPROC']} does not divide the batch of {batch} sequences")
    tokenizer = flops.get_config(p["members"][0]).tokenizer
    derived = {"MEMBERS": ",".join(p["members"]), "TOKENIZER": tokenizer, "DATASET": "",
               "STAGES": str(len(o["SEEDS"].split()) * len(p["members"]) * (2 - int(o["SKIP_INDEPENDENT"])))}
    if not o["DATA"]:  # run_family.sh prepares DATASET into DATA
        openstax = shared / "data" / "corpus" / "openstax"
        derived["DATASET"] = str(openstax) if openstax.is_dir() else "fineweb-edu"
        derived["DATA"] = f"data/{'openstax' if openstax.is_dir() else 'fineweb'}_{tokenizer}"
        if openstax.is_dir() and (shared / "tiktoken_cache").is_dir():
            derived["TIKTOKEN_CACHE_DIR"] = os.environ.get("TIKTOKEN_CACHE_DIR", str(shared / "tiktoken_cache"))
    return {**o, **derived}


def plan_argv(o) -> list[str]:
    """flops.py's arguments for the plan of these settings."""
    argv = ["--family", o["FAMILY"], "--chinchilla", o["CHINCHILLA"], "--lr_schedule", o["LR_SCHEDULE"],
            "--budget_scale", o["BUDGET_SCALE"]]
    for name in ("MEMBERS", "STAGE_FRACTIONS"):
        argv += [f"--{name.lower()}", o[name]] if o[name] else []
    return argv


def the_plan(o) -> dict:
    import flops
    a = flops.parse_args(plan_argv(o))
    return flops.plan(a.family, a.chinchilla, a.lr_schedule, a.members, a.stage_fractions, a.budget_scale)


def settings(argv):
    """Shell assignments (export NAME=value) of every setting, checked."""
    o = check(parse_options(argv, os.environ), Path(os.environ.get("PGF_SHARED", "../shared")))
    print("\n".join(f"export {k}={shlex.quote(v)}" for k, v in o.items()))


# ---------------------------------------------------------------------------------------------
# The stages: each one's ready command

def ckpt(o, seed, kind, size, suffix="") -> str:
    return f"{o['OUT']}/seed_{seed}/{kind}/ckpt_{size}{suffix}.pt"


def grow(o, seed: str, size: str) -> dict:
    """expand.py growing SIZE's predecessor in the chain into SIZE (GROW_FROM=stable: its weights
    before the decay, which its stage wrote with --stable_ckpt). --reuse keeps a grown checkpoint only
    if it was grown from the source as it is now (a re-run after the source stage was stopped and
    finished grows again); expand.py refuses an unfinished source."""
    members = o["MEMBERS"].split(",")
    prev = members[members.index(size) - 1]
    src = ckpt(o, seed, "progressive", prev, "_stable" if o["GROW_FROM"] == "stable" else "")
    opt = ["--optimizer_state"] if o["OPT_STATE"] == "1" else []
    return {"cmd": [os.environ.get("PYTHON", "python3"), "expand.py", "--src", src, "--size", size,
                    "--method", o["METHOD"], "--depth", o["DEPTH"], "--noise", o["NOISE"], "--aki_top", o["AKI_TOP"],
                    "--seed", seed, "--out", ckpt(o, seed, "progressive", prev, "_expanded"), "--reuse", *opt]}


def stage(o, plan: dict, seed: str, kind: str, size: str) -> dict:
    """One training stage of the plan: a line on what it trains, its memory layout (micro-batch x
    accumulation x NPROC = the plan's batch, strategy, activation checkpointing: parallel.py's plan for
    NPROC GPUs of GPU_MEM GB), whether it fits, and its train.py command; or, for the smallest
    independent member when it is the same run as the first progressive stage, where to reuse it from."""
    import flops
    from parallel import choose_layout
    rows = {r["size"]: r for r in plan[kind]}
    s, first = rows[size], plan["progressive"][0]
    if kind == "independent" and s == first:
        return {"about": f"member {size}: the same run as progressive stage {size}, reused",
                "reuse": ckpt(o, seed, "progressive", size)}
    nproc, batch = int(o["NPROC"]), s["batch_size"]
    r = choose_layout(flops.get_config(size), nproc, batch, gpu_mem_gb=float(o["GPU_MEM"]))
    launcher = [os.environ.get("PYTHON", "python3")] if nproc == 1 else \
        ["torchrun", "--standalone", f"--nproc_per_node={nproc}"]
    run = f"{o['OUT']}/seed_{seed}/{kind}"
    cmd = launcher + ["train.py", "--size", size, "--data", o["DATA"], "--tokens", str(s["tokens"]),
                      "--lr", str(s["lr"]), "--min_lr", str(s["min_lr"]),
                      "--warmup", str(flops.warmup_steps(s["tokens"], batch * s["seq_len"])),
                      "--batch_size", str(r["micro_batch"]), "--grad_accum", str(r["grad_accum"]),
                      # the whole layout and its budget, so train.py runs the one printed here (its --dry_run says so)
                      "--fsdp", "on" if r["strategy"] == "fsdp" else "off",
                      "--activation_checkpointing", "on" if r["checkpointing"] else "off", "--gpu_mem", o["GPU_MEM"],
                      "--seq_len", str(s["seq_len"]), "--seed", seed, "--schedule", o["SCHEDULE"],
                      "--eval_tokens", o["EVAL_TOKENS"], "--out", f"{run}/{size}", "--ckpt", ckpt(o, seed, kind, size),
                      "--resume"]
    if o["FAMILY"] not in ("tiny", "tiny5"):  # the GPU families' stages take hours to days
        cmd += ["--log_every_min", "1", "--ckpt_every_min", "30"]
    members = plan["members"]
    if kind == "progressive" and size != members[0]:
        cmd += ["--init", ckpt(o, seed, kind, members[members.index(size) - 1], "_expanded")]
    if kind == "progressive" and o["GROW_FROM"] == "stable" and size != members[-1]:
        # the member is still the decayed model; its successor grows from the weights before the decay
        cmd += ["--stable_ckpt", ckpt(o, seed, kind, size, "_stable")]
    about = f"stage {size}: {s['tokens']} tokens, max LR {s['lr']}" if kind == "progressive" else \
        f"member {size}: {s['tokens']} tokens from scratch, max LR {s['lr']}"
    return {"about": about, "layout": f"stage {size}: {flops.describe_layout(r, nproc, batch)}",
            "fits": int(r["fits"]), "cmd": cmd}


def shell(values: dict) -> str:
    """Shell assignments of strings and lists (as arrays), quoted."""
    return "\n".join(f"{k}=({shlex.join(v)})" if isinstance(v, list) else f"{k}={shlex.quote(str(v))}"
                     for k, v in values.items())


# ---------------------------------------------------------------------------------------------
# Progress and verdict

def progress(o, plan: dict, started: float, flops_before: float, label: str) -> str:
    """The line before each stage: the ETA is the plan's FLOPs still to train at the FLOPs/s of this
    invocation so far (FLOPs from the stages' metrics.jsonl, time on the wall clock, so expansions and
    evaluations slow it down as they do the run); the reused smallest independent member counts as
    trained. With no label: the FLOPs trained so far."""
    kinds = ["progressive"] + ([] if o["SKIP_INDEPENDENT"] == "1" else ["independent"])
    stages = [(seed, kind, s) for seed in o["SEEDS"].split() for kind in kinds for s in plan[kind]]

    def trained(seed, kind, size):
        rows = read_jsonl(f"{o['OUT']}/seed_{seed}/{kind}/{size}/metrics.jsonl")
        return max([r.get("flops", 0) for r in rows] + [0])

    done = sum(trained(seed, kind, s["size"]) for seed, kind, s in stages)
    if not label:
        return str(done)
    todo = sum(s["flops"] for _, kind, s in stages
               if not (kind == "independent" and s == plan["progressive"][0])) - done
    elapsed = time.time() - started
    rate = (done - flops_before) / max(elapsed, 1)
    eta = f"~{todo / rate / 60:.1f} min" if rate > 0 else "known after the first stage"
    return f"{label} | elapsed {elapsed / 60:.1f} min | ETA of the whole run {eta}"


def main():
    cmd, *args = sys.argv[1:] or ["--help"]
    if cmd in ("--help", "-h"):
        return print(__doc__.strip() + "\n\n" + OPTIONS_HELP)
    if cmd == "options":  # run_family.sh --help
        return print(OPTIONS_HELP)
    if cmd == "settings":
        return settings(args)
    o = {k: os.environ.get(k, "") for k in (*OPTIONS, "TOKENIZER")}
    if cmd == "verdict":
        verdict = json.loads(Path(args[0], "report.json").read_text()).get("verdict")
        return print(verdict or "")
    if cmd in ("plan", "check"):
        import flops
        return flops.main(plan_argv(o) + (["--json", f"{o['OUT']}/plan.json"] if cmd == "plan" else
                                           ["--check", "--nproc", o["NPROC"], "--gpu_mem", o["GPU_MEM"]]))
    if cmd == "grow":
        return print(shell(grow(o, *args)))
    plan = json.loads(Path(o["OUT"], "plan.json").read_text())
    if cmd == "stage":
        return print(shell(stage(o, plan, *args)))
    if cmd == "progress":
        return print(progress(o, plan, float(args[0]), float(args[1]), args[2] if len(args) > 2 else ""))
    raise UserError(f"unknown command {cmd!r} (python family.py --help)")


if __name__ == "__main__":
    run_cli(main)
