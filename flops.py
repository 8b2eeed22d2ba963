"""
FLOPs of training a GPT of this project, the family's training recipe and its FLOPs budget;
--memory and --check print parallel.py's per-GPU memory plan.

Per token, one forward+backward pass costs (backward = 2 x forward):

    train_flops_per_token = 6 * N_matmul + 12 * n_layer * n_embd * T

- N_matmul = n_layer * (4 d^2 + 2 d d_ff) + vocab * d: every weight that takes part in a matrix
  multiply, the output head included (tied or not); embedding lookups, biases and LayerNorms are
  not counted. Llama members: grouped-query attention's qkv has d (d + 2 n_kv_head head_dim)
  weights, SwiGLU's MLP 3 d d_ff (gate, up, down), so
  N_matmul = n_layer * (d (2d + 2 n_kv_head head_dim) + 3 d d_ff) + vocab * d (model.count_params);
  RMSNorm, RoPE and the SwiGLU product are elementwise, not counted.
- 12 L d T: attention scores q.k^T and the weighted sum of v, 2 * T * d multiply-adds each per
  layer forward (per QUERY head: grouped-query attention shares keys and values, not this work). We count the full T x T square, as PaLM's MFU does; a causal kernel does only
  about half of that useful work. torch's FlopCounterMode counts the full square too, for the
  CUDA SDPA kernels and for the math backend; it does NOT count the CPU flash kernel
  (aten._scaled_dot_product_flash_attention_for_cpu) at all, so compare on CPU under
  sdpa_kernel(SDPBackend.MATH) (tests/test_flops.py: agreement is exact).

The family budget (Yano et al. 2025): the smallest member trains D_1 = 20 * chinchilla * N_1 tokens
(N = total parameters); every grown stage k gets the same fraction f of the FLOPs F_k its
independent counterpart (D_k = 20 * chinchilla * N_k tokens) would use, and f is chosen so that the
whole progressive family costs what the largest member alone costs:

    f = (F_L - F_1) / sum_{k>=2} F_k,    F_k = train_flops_per_token(k) * D_k

For exact 2x steps (F = 1 : 4 : 16 : 64) that is f = 0.75, stage tokens D, 1.5D, 3D, 6D, and a
saving of 1 - 64/85 = 24.7% against training the four members independently.

    python flops.py --family paper --chinchilla 2 --lr_schedule adjusted   # both plans, GPU-hours
    python flops.py --family tiny --json plan.json                          # the plan family.py reads
    python flops.py --memory --nproc 8 --family paper                       # DDP vs FSDP per GPU
    python flops.py --check --nproc 8 --family paper --gpu_mem 80           # each stage's layout
"""
import argparse
import math

from util import ArgumentParser, UserError, check_args, check_ranges, run_cli, write_json  # first: see util.py

TOKENS_PER_PARAM = 20  # Chinchilla (Hoffmann et al. 2022): compute-optimal tokens ~ 20 x params
LR_SCHEDULES = ("fixed", "adjusted")  # max LR per member: see member_lr


def _csv(kind):
    return lambda s: [kind(x) for x in s.split(",") if x]


def parse_args(argv=None) -> argparse.Namespace:
    ap = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", default="paper", help="a family of model.py: paper, tiny, ... (python flops.py --presets; default paper)")
    ap.add_argument("--members", type=_csv(str), default=None,
                    help="comma-separated sub-chain of the family, e.g. 50k,250k (default: all)")
    ap.add_argument("--chinchilla", type=float, default=1.0,
                    help=f"multiple of Chinchilla's {TOKENS_PER_PARAM} tokens/param (default 1)")
    ap.add_argument("--lr_schedule", choices=LR_SCHEDULES, default="fixed",
                    help="fixed: every member uses the smallest's max LR; adjusted: max LR "
                         "decreases linearly from the smallest's to the largest's (default fixed)")
    ap.add_argument("--budget_scale", type=float, default=1.0,
                    help="progressive budget as a multiple of the largest member's independent FLOPs "
                         "(1: the paper's rule)")
    ap.add_argument("--stage_fractions", type=_csv(float), default=None,
                    help="comma-separated weights of the grown stages' shares of the budget "
                         "(default: proportional to their independent FLOPs)")
    ap.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilization for GPU-hours (default 0.4)")
    ap.add_argument("--peak", type=float, default=989e12,
                    help="peak FLOP/s of one GPU (default 989e12: H100 SXM bf16 dense, datasheet)")
    ap.add_argument("--gpus", type=int, default=8, help="GPUs for the wall-clock column (default 8)")
    ap.add_argument("--json", metavar="PATH", help="also write the plan as JSON (atomically)")
    ap.add_argument("--presets", action="store_true", help="print every model preset as a table and exit")
    ap.add_argument("--memory", action="store_true",
                    help="print per-GPU memory for DDP vs FSDP for each size instead of the plan")
    ap.add_argument("--check", action="store_true",
                    help="print each member's micro-batch, accumulation, strategy, activation checkpointing "
                         "and planned memory per GPU at the family's batch; exit 2 if one does not fit")
    ap.add_argument("--global_batch", type=int, default=0,
                    help="sequences per optimizer step for --check (default: the family's)")
    ap.add_argument("--nproc", type=int, default=8, help="GPUs for --memory, --check (default 8)")
    ap.add_argument("--micro_batch", type=int, default=8, help="sequences per GPU for --memory (default 8)")
    ap.add_argument("--gpu_mem", type=float, default=80.0,
                    help="GB (1e9 bytes) of memory per GPU for --memory, --check (default 80)")
    return ap.parse_args(argv)


check_args(__name__, parse_args)  # --help and usage errors before torch loads
from model import FAMILIES, PRESETS, GPTConfig, count_params, get_config  # noqa: E402

# Training recipe per family. Max LR of the smallest and of the largest member: the "adjusted"
# schedule interpolates between them, "fixed" uses the first for every member.
# paper: our reading of the paper (its appendix configs were not available). tiny: the best of 1e-3..1.6e-2 for 20k and 250k trained alone
# (experiments/lr_sweep.sh, README): 20k still improved at 1.6e-2, 250k was best at 8e-3.
# gpt2: GPT-3's (Brown et al. 2020, Table 2.1) for its 125M and 1.3B models, the nearest in shape.
# tiny-llama and llama: tiny's and paper's, not swept for them. smollm2: GPT-3's for its 125M and
# 350M models, the nearest in size (SmolLM2's own schedule is not this project's).
FAMILY_LR = {"paper": (1.5e-3, 3e-4), "tiny": (1.6e-2, 8e-3), "gpt2": (6e-4, 2e-4),
             "tiny-llama": (1.6e-2, 8e-3), "llama": (1.5e-3, 3e-4), "smollm2": (6e-4, 3e-4),
             # tiny's line one step further: 8e-3 at t = 3/4 (250k), so the shared members keep tiny's LRs
             "tiny5": (1.6e-2, 1.6e-2 - 8e-3 / 0.75)}
# Sequences per optimizer step; the sequence length is the preset's context (block_size).
# paper: 1024 x 1024 tokens ~ 1M tokens per step; tiny: 16 x 256 = 4096 tokens;
# gpt2: 512 x 1024 ~ 0.5M tokens, GPT-3's batch for its models up to 760M.
# tiny5, tiny-llama and llama as tiny and paper; smollm2: 256 x 8192 ~ 2M tokens.
FAMILY_BATCH = {"paper": 1024, "tiny": 16, "tiny5": 16, "gpt2": 512, "tiny-llama": 16, "llama": 1024,
                "smollm2": 256}
MIN_LR_RATIO = 0.1  # cosine decay ends at lr / 10
WARMUP_FRACTION = 0.05  # of each stage's tokens; a grown stage warms up again (fresh optimizer)
SCHEDULE = "cosine"  # the paper's; train.py --schedule wsd is the alternative

# Dense bf16 peak FLOP/s by device name (datasheets; the SXM parts unless named), for MFU in train.py
# and bench/gpu.py: the first key that the device's name contains wins, so the variants come first.
PEAK_BF16 = [("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H200 NVL", 835e12), ("H100", 989e12),
             ("H200", 989e12), ("A100", 312e12), ("L40S", 362e12), ("4090", 165e12)]


def device_peak(name: str) -> float | None:
    """Peak bf16 FLOP/s of a device by its name (torch.cuda.get_device_name), None if unknown."""
    return next((peak for key, peak in PEAK_BF16 if key in name), None)


def train_flops_per_token(cfg: GPTConfig, seq_len: int | None = None) -> float:
    T = cfg.block_size if seq_len is None else seq_len
    return 6 * count_params(cfg)["matmul"] + 12 * cfg.n_layer * cfg.n_embd * T


# ---------------------------------------------------------------------------------------------
# The family budget

def progressive_flops(independent_flops: list[float], stage_fractions: list[float] | None = None,
                      budget_scale: float = 1.0) -> list[float]:
    """FLOPs of each progressive stage, given what each member would cost trained independently.

    The first stage costs what the smallest member costs alone; the grown stages share the rest
    of the largest member's cost, F_L - F_1, in proportion to `stage_fractions` (one weight per
    grown stage), by default to their independent FLOPs: then every grown stage gets the same
    fraction f = (F_L - F_1) / sum_{k>=2} F_k of its independent cost. Either way the stages sum
    to F_L (budget_scale x F_L for a smaller or larger budget, an experiment beyond the paper).
    """
    first, grown = independent_flops[0], independent_flops[1:]
    weights = grown if stage_fractions is None else stage_fractions
    budget = budget_scale * independent_flops[-1] - first
    return [first] + [budget * w / sum(weights) for w in weights]


def member_lr(family: list[str], family_name: str, size: str, lr_schedule: str) -> float:
    """Max LR of a member: "adjusted" decreases linearly with its index in the whole family.

    The index is taken in the whole family, not in a sub-chain, so that a member trains with the
    same LR whichever chain it is part of (skip-a-member ablations change the growth only).
    """
    lr_first, lr_last = FAMILY_LR[family_name]
    if lr_schedule == "fixed":
        return lr_first
    t = family.index(size) / (len(family) - 1)
    return (1 - t) * lr_first + t * lr_last  # exact at both ends


def warmup_steps(tokens: float, step_tokens: int) -> int:
    """The recipe's linear warmup of a stage of `tokens`, in whole optimizer steps of step_tokens."""
    return round(WARMUP_FRACTION * tokens) // step_tokens


def recipe(size: str, lr_schedule: str = "adjusted") -> dict:
    """How the family trains one of its members: max and final LR, sequences per optimizer step and
    sequence length; SCHEDULE and WARMUP_FRACTION hold for all (the plan's stages and train.py's
    defaults both come from here)."""
    family_name, _ = _resolve_family([size])  # the first family that holds it: tiny's members are tiny's
    lr = member_lr(FAMILIES[family_name], family_name, size, lr_schedule)
    return {"lr": lr, "min_lr": lr * MIN_LR_RATIO, "batch_size": FAMILY_BATCH[family_name],
            "seq_len": get_config(size).block_size}


def _resolve_family(family: str | list[str]) -> tuple[str, list[str]]:
    """A family name or list of sizes -> (name of the family the recipe comes from, sizes)."""
    if isinstance(family, str):
        if family not in FAMILIES:
            raise UserError(f"unknown family {family!r}; choose one of: {', '.join(FAMILIES)}")
        return family, list(FAMILIES[family])
    for name, sizes in FAMILIES.items():
        if family and all(s in sizes for s in family):
            return name, list(family)
    raise UserError(f"sizes {', '.join(family) or '(none)'} are not all members of one family "
                    f"({'; '.join(f'{n}: ' + ', '.join(s) for n, s in FAMILIES.items())})")


def _stage(size: str, tokens: float, flops_per_token: float, cumulative: float,
           independent_flops: float, lr_schedule: str) -> dict:
    """One row of a plan: the member's recipe for a stage of `tokens`, plus its cost."""
    tokens = round(tokens)
    flops = flops_per_token * tokens
    r = recipe(size, lr_schedule)
    return {"size": size, "params": count_params(get_config(size))["total"], "tokens": tokens, "flops": flops,
            "cumulative_flops": cumulative + flops, "fraction": flops / independent_flops,
            "flops_per_token": flops_per_token, "lr": r["lr"], "min_lr": r["min_lr"],
            "warmup_tokens": round(WARMUP_FRACTION * tokens), "batch_size": r["batch_size"],
            "seq_len": r["seq_len"]}


def _rows(sizes, tokens, flops_per_token, independent_flops, lr_schedule) -> list[dict]:
    rows, cumulative = [], 0.0
    for size, d, c, f_ind in zip(sizes, tokens, flops_per_token, independent_flops):
        rows.append(_stage(size, d, c, cumulative, f_ind, lr_schedule))
        cumulative = rows[-1]["cumulative_flops"]
    return rows


def plan(family: str | list[str], chinchilla: float = 1, lr_schedule: str = "fixed",
         members: list[str] | None = None, stage_fractions: list[float] | None = None,
         budget_scale: float = 1.0) -> dict:
    """The progressive plan and the independent plan for the same members, under one budget.

    family: a family name ("paper", "tiny", "gpt2") or a list of its sizes; members: a sub-chain of it
    (e.g. ["50k", "250k"], a 4x jump), default the whole family; stage_fractions: weights of the
    grown stages' shares of the budget (see progressive_flops). Tokens are rounded to whole
    tokens, so the progressive total equals the largest member's independent FLOPs up to half a
    token's FLOPs per stage.
    """
    family_name, sizes = _resolve_family(family)
    members = sizes if members is None else list(members)
    unknown = [m for m in members if m not in sizes]
    if unknown:
        raise UserError(f"{', '.join(unknown)} not in the {family_name} family ({', '.join(sizes)})")
    if not 0 < chinchilla < math.inf:
        raise UserError(f"chinchilla must be > 0, got {chinchilla}")
    if lr_schedule not in LR_SCHEDULES:
        raise UserError(f"lr_schedule must be fixed or adjusted, got {lr_schedule!r}")
    params = [count_params(get_config(m))["total"] for m in members]
    if len(members) < 2 or any(a >= b for a, b in zip(params, params[1:])):
        raise UserError(f"a progressive chain needs >= 2 members of increasing size, got {members}")
    if stage_fractions is not None and (len(stage_fractions) != len(members) - 1
                                        or any(not 0 < w < math.inf for w in stage_fractions)):
        raise UserError(f"stage_fractions needs {len(members) - 1} positive weights (one per "
                        f"grown stage), got {stage_fractions}")

    c = [train_flops_per_token(get_config(m)) for m in members]
    indep_tokens = [TOKENS_PER_PARAM * chinchilla * n for n in params]
    indep_flops = [ci * d for ci, d in zip(c, indep_tokens)]
    if not budget_scale * indep_flops[-1] > indep_flops[0]:
        raise UserError(f"budget_scale {budget_scale} leaves nothing for the grown stages")
    if not budget_scale * indep_flops[-1] <= sum(indep_flops):  # a saving below 0 measures nothing
        raise UserError(f"budget_scale {budget_scale} gives the progressive family more FLOPs than training "
                        f"every member alone; use at most {sum(indep_flops) / indep_flops[-1]:.4g}")
    prog_tokens = [f / ci for f, ci in zip(progressive_flops(indep_flops, stage_fractions, budget_scale), c)]
    progressive = _rows(members, prog_tokens, c, indep_flops, lr_schedule)
    independent = _rows(members, indep_tokens, c, indep_flops, lr_schedule)
    total_prog, total_indep = progressive[-1]["cumulative_flops"], independent[-1]["cumulative_flops"]
    return {"family": family_name, "members": members, "chinchilla": chinchilla,
            "lr_schedule": lr_schedule, "stage_fractions": stage_fractions, "budget_scale": budget_scale,
            "budget_flops": independent[-1]["flops"],  # the largest member trained alone
            "progressive": progressive, "independent": independent,
            "progressive_flops": total_prog, "independent_flops": total_indep,
            "saving": 1 - total_prog / total_indep}


# ---------------------------------------------------------------------------------------------
# CLI

def _si(x: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def print_plan(p: dict, mfu: float, peak: float, gpus: int):
    gpu_hours = lambda flops: flops / (mfu * peak) / 3600  # noqa: E731
    head = (f"{'':12s} {'size':>5s} {'params':>7s} {'tokens':>8s} {'FLOPs':>9s} {'x indep':>7s} "
            f"{'cum FLOPs':>9s} {'max LR':>8s} {'GPU-h':>9s} {f'h on {gpus}':>9s}")
    print(f"family {p['family']}: {' -> '.join(p['members'])}, {p['chinchilla']:g}x Chinchilla "
          f"({TOKENS_PER_PARAM} tokens/param), LR {p['lr_schedule']}; "
          f"GPU-hours at MFU {mfu:g} of {peak:.4g} FLOP/s")
    print(head)
    print("-" * len(head))
    for plan_name in ("progressive", "independent"):
        for r in p[plan_name]:
            print(f"{plan_name:12s} {r['size']:>5s} {_si(r['params']):>7s} {_si(r['tokens']):>8s} "
                  f"{r['flops']:9.3e} {r['fraction']:7.3f} {r['cumulative_flops']:9.3e} "
                  f"{r['lr']:8.2e} {gpu_hours(r['flops']):9.4g} {gpu_hours(r['flops']) / gpus:9.4g}")
    print(f"total: progressive {p['progressive_flops']:.4e} FLOPs "
          f"({gpu_hours(p['progressive_flops']):.4g} GPU-h), independent "
          f"{p['independent_flops']:.4e} ({gpu_hours(p['independent_flops']):.4g} GPU-h); "
          f"saving {100 * p['saving']:.1f}%")


def print_memory(sizes: list[str], nproc: int, micro_batch: int, gpu_mem_gb: float):
    from parallel import GB, GPU_MEM_USABLE, choose_strategy, memory_plan
    plans = [memory_plan(get_config(s), nproc, micro_batch, gpu_mem_gb=gpu_mem_gb) for s in sizes]
    gb = lambda x: f"{x / GB:.1f}"  # noqa: E731
    print(f"per-GPU memory (GB) on {nproc} GPUs of {gpu_mem_gb:g} GB ({GPU_MEM_USABLE:.0%} usable), "
          f"micro-batch {micro_batch}, bf16 mixed precision + AdamW, without activation checkpointing "
          f"(the last columns: what train.py chooses, checkpointing included; loss bwd: the cross-entropy "
          f"backward's transient)")
    head = (f"{'size':>5s} {'params':>7s} {'DDP state':>9s} {'FSDP state':>10s} {'FSDP work':>9s} "
            f"{'activ':>7s} {'loss bwd':>8s} {'DDP total':>9s} {'FSDP total':>10s} {'chosen':>6s} "
            f"{'act ckpt':>8s} {'total':>6s}")
    print(head)
    print("-" * len(head))
    for s, m in zip(sizes, plans):
        ddp, fsdp = m["ddp"], m["fsdp"]
        c = choose_strategy(get_config(s), nproc, micro_batch, gpu_mem_gb=gpu_mem_gb)
        note = "" if c["fits"] else " (does not fit)"
        print(f"{s:>5s} {_si(m['params']):>7s} {gb(ddp['state']):>9s} {gb(fsdp['state']):>10s} "
              f"{gb(fsdp['working_set']):>9s} {gb(ddp['activations']):>7s} {gb(ddp['loss_backward']):>8s} "
              f"{gb(ddp['total']):>9s} "
              f"{gb(fsdp['total']):>10s} {c['strategy']:>6s} {'on' if c['checkpointing'] else 'off':>8s} "
              f"{gb(c['bytes']):>6s}{note}")


def check_family(sizes: list[str], global_batch: int, nproc: int, gpu_mem_gb: float) -> list[dict]:
    """choose_layout for every member; prints one line each, returns the layouts."""
    from parallel import choose_layout
    layouts = [{"size": s, **choose_layout(get_config(s), nproc, global_batch, gpu_mem_gb=gpu_mem_gb)}
               for s in sizes]
    for r in layouts:
        print(f"{r['size']:>5s}: {describe_layout(r, nproc, global_batch)}")
    return layouts


def describe_layout(r: dict, nproc: int, global_batch: int) -> str:
    """One line for a choose_layout result: how the batch is made, strategy, memory, whether it fits."""
    from parallel import GB
    return (f"micro-batch {r['micro_batch']} x accumulation {r['grad_accum']} x {nproc} processes = "
            f"{global_batch}; {r['strategy']}, activation checkpointing {'on' if r['checkpointing'] else 'off'}; "
            f"planned {r['bytes'] / GB:.1f} GB of {r['usable_bytes'] / GB:.1f} GB usable per GPU"
            + ("" if r["fits"] else " -- DOES NOT FIT"))


def print_presets():
    """Every preset of every family: shape, parameter counts, training FLOPs per token."""
    head = f"{'family':10s} {'size':>16s} {'layers':>6s} {'width':>6s} {'heads':>5s} {'kv':>3s} {'hd':>4s} " \
           f"{'FFN':>6s} {'vocab':>6s} {'ctx':>6s} {'total':>14s} {'non-emb':>14s} {'train FLOPs/tok':>16s}"
    print(head)
    print("-" * len(head))
    in_family = {s for sizes in FAMILIES.values() for s in sizes}
    rows = [*FAMILIES.items(), ("-", [s for s in PRESETS if s not in in_family])]  # "-": in no family
    printed = set()  # a size in two families (tiny5 repeats tiny) under the first only
    for fam, sizes in rows:
        for s in sizes:
            if s in printed:
                continue
            printed.add(s)
            c, n = get_config(s), count_params(get_config(s))
            print(f"{fam:10s} {s:>16s} {c.n_layer:6d} {c.n_embd:6d} {c.n_head:5d} {c.kv_heads:3d} {c.head_dim:4d} "
                  f"{c.d_ff:6d} {c.vocab_size:6d} {c.block_size:6d} {n['total']:14,d} "
                  f"{n['non_embedding']:14,d} {train_flops_per_token(c):16.4g}")


def main(argv=None):
    args = parse_args(argv)
    check_ranges(args, {"chinchilla": "(0, inf)", "budget_scale": "(0, inf)", "mfu": "(0, 1]", "peak": "(0, inf)",
                        "gpus": "[1, inf)", "global_batch": "[0, inf)", "nproc": "[1, inf)",
                        "micro_batch": "[1, inf)", "gpu_mem": "(0, inf)"})
    if args.presets:
        return print_presets()
    p = plan(args.family, args.chinchilla, args.lr_schedule, args.members, args.stage_fractions,
             args.budget_scale)
    if args.check:
        layouts = check_family(p["members"], args.global_batch or FAMILY_BATCH[p["family"]], args.nproc,
                               args.gpu_mem)
        unfit = [r["size"] for r in layouts if not r["fits"]]
        if unfit:
            raise UserError(f"{', '.join(unfit)} do not fit in {args.gpu_mem:g} GB per GPU even with "
                            f"micro-batch 1 and activation checkpointing; use more GPUs (--nproc)")
        return
    if args.memory:
        print_memory(p["members"], args.nproc, args.micro_batch, args.gpu_mem)
    else:
        print_plan(p, args.mfu, args.peak, args.gpus)
    if args.json:
        write_json(args.json, p)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    run_cli(main)
