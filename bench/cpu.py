"""
On CPU, the training step of each tiny member (model.FAMILIES["tiny"], flops.FAMILY_BATCH tokens):

    python bench/cpu.py --out bench/

  a plain eager float32 step against the step as train.py runs it (mode `train`) and other
  configurations (--cpu_modes), interleaved step by step so that every mode sees the same load from
  whatever else runs on the machine; median step time, CPU time per step, how busy other processes
  kept the machine meanwhile, and a profile of where train.py's step spends its time; then the
  largest op of that profile, causal attention, alone: SDPA's CPU flash kernel against its math
  backend and an explicit softmax, eager and compiled (same outputs and gradients, checked).

Results go to OUT/results_cpu.json and a short OUT/results_cpu.md.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from util import ArgumentParser, check_args, md_table, run_cli  # noqa: E402  first: see util.py
from bench import add_step_flags  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_step_flags(p, "results_cpu")
    p.add_argument("--cpu_modes", default="plain,train,compile+fused,compile+bf16+fused,t1,train+t1",
                   help="comma-separated step modes, the first the baseline; a mode joins parts with +: "
                        "train (what train.py chooses on this device), eager|compile, fp32|bf16, fused "
                        "(AdamW), t<N> (threads), e.g. compile+bf16+t1; plain = eager fp32, AdamW's "
                        "default (foreach) update, torch's default threads")
    p.add_argument("--sizes", default="", help="comma-separated members (default: the tiny family)")
    return p.parse_args(argv)


check_args(__name__, parse_args)  # --help and usage errors before torch loads
import dataclasses  # noqa: E402

import torch  # noqa: E402

from bench.common import (CLEAN_LOAD, StepMode, TrainStep, causal_sdpa, check_run, machine,  # noqa: E402
                          random_batches, save_results, sdpa_with, time_steps)
from flops import FAMILY_BATCH  # noqa: E402
from model import FAMILIES, GPT, get_config  # noqa: E402


def op_shares(step: TrainStep, batches, top: int = 6) -> dict[str, float]:
    """Where a training step's time goes: each op's share of the self time of all ops (torch
    profiler; self time is the calling thread's, so intra-op threads count once), the largest first."""
    from torch.profiler import profile
    with profile() as prof:
        for x, y in batches:
            step(x, y)
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    events.sort(key=lambda e: -e.self_cpu_time_total)
    return {e.key: e.self_cpu_time_total / total for e in events[:top]}


def cpu_family_speed(sizes: list[str], modes: list[str], steps: int, warmup: int) -> list[dict]:
    """Every member, modes[0] the baseline, all modes interleaved from one initialisation."""
    device, batch = torch.device("cpu"), FAMILY_BATCH["tiny"]
    default_threads = torch.get_num_threads()
    out = []
    for size in sizes:
        cfg = get_config(size)
        torch.manual_seed(0)
        base = GPT(cfg, use_kernels=False)
        trainers = {}
        for spec in modes:
            model = GPT(cfg, use_kernels=False)
            model.load_state_dict(base.state_dict())
            trainers[spec] = TrainStep(model, StepMode.parse(spec), device)
        batches = random_batches(warmup + steps, batch, cfg.block_size, cfg.vocab_size, device)
        res = time_steps(trainers, batches, warmup)
        profiled = "train" if "train" in trainers else modes[0]
        row = {"size": size, "batch": batch, "seq_len": cfg.block_size, "modes": res,
               "profiled_mode": profiled, "profile": op_shares(trainers[profiled], batches[:3])}
        torch.set_num_threads(default_threads)
        tokens = batch * cfg.block_size
        base_r = res[modes[0]]
        for r in res.values():
            r["tokens_per_s"] = tokens / r["median_s"]
            r["speedup"] = base_r["median_s"] / r["median_s"]
            clean = base_r["clean_median_s"] and r["clean_median_s"]
            r["clean_speedup"] = base_r["clean_median_s"] / r["clean_median_s"] if clean else None
        out.append(row)
        print(f"  {size:5s} " + "  ".join(
            f"{spec}: {r['tokens_per_s']:7.0f} tok/s x{r['speedup']:.2f}" for spec, r in res.items()), flush=True)
        torch._dynamo.reset()
    return out


def explicit_attention(q, k, v):
    """softmax(Q K^T / sqrt(d) + causal mask) V, written out: the T x T matrix is materialised."""
    T = q.shape[-2]
    s = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    s = s.masked_fill(torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    return torch.softmax(s, dim=-1) @ v


def cpu_attention_speed(sizes: list[str], reps: int) -> list[dict]:
    """Causal attention at each tiny member's shape (float32), forward + backward on this CPU:
    SDPA as the model calls it (its CPU flash kernel), SDPA's math backend, and the explicit
    softmax eager and compiled: would another formulation of the largest op of a step pay here?"""
    from torch.nn.attention import SDPBackend

    impls = {"sdpa": causal_sdpa, "sdpa_math": sdpa_with(SDPBackend.MATH), "explicit": explicit_attention,
             "explicit_compiled": torch.compile(explicit_attention, dynamic=False)}
    out = []
    for size in sizes:
        cfg, batch = get_config(size), FAMILY_BATCH["tiny"]
        torch.manual_seed(0)
        inputs = [torch.randn(batch, cfg.n_head, cfg.block_size, cfg.head_dim, requires_grad=True) for _ in range(3)]
        dy = torch.randn_like(inputs[0])
        ms, grads = {}, {}
        for name, fn in impls.items():
            times = []
            for _ in range(reps + 2):  # the first two untimed: compilation, allocator
                t0 = time.perf_counter()
                y = fn(*inputs)
                grads[name] = (y, *torch.autograd.grad(y, inputs, dy))
                times.append(time.perf_counter() - t0)
            ms[name] = 1e3 * statistics.median(times[2:])
        # every formulation computes the same function: the largest difference from SDPA's
        diff = max((a - b).abs().max().item() for name in impls for a, b in zip(grads[name], grads["sdpa"]))
        out.append({"size": size, "shape": [batch, cfg.n_head, cfg.block_size, cfg.head_dim], "ms": ms,
                    "max_abs_diff": diff})
        print(f"  attention {size}: " + ", ".join(f"{k} {v:.1f} ms" for k, v in ms.items())
              + f"; max |diff| {diff:.1e}", flush=True)
        torch._dynamo.reset()
    return out

def _md_cpu(res: dict) -> str:
    base = res["modes"][0]
    lines = ["# CPU training step, tiny family\n", f"Machine: {res['machine']}\n",
             f"Batch {res['family'][0]['batch']} x {res['family'][0]['seq_len']} tokens; medians of "
             f"{res['steps']} steps after {res['warmup']} untimed; modes interleaved step by step. "
             f"x: speed-up against `{base}` over all timed steps, and over the clean ones (other "
             f"processes below {CLEAN_LOAD} core; '-' where fewer than 3 were clean). CPU s: this "
             "process's CPU time per step, all threads (for one thread, about the wall time on an idle "
             "machine). others: cores that other processes kept busy during the steps (median). "
             f"`train` is what train.py chooses on this CPU: {_mode_words(res['resolved'].get('train'))}.\n"]
    rows = []
    for row in res["family"]:
        for spec, r in row["modes"].items():
            clean = "-" if r["clean_speedup"] is None else f"{r['clean_speedup']:.2f}"
            rows.append([row['size'], spec, f"{r['tokens_per_s']:.0f}", f"{r['speedup']:.2f}", clean,
                         f"{r['median_s']:.3f}", f"{r['median_cpu_s']:.3f}",
                         f"{statistics.median(r['others_load']):.1f}"])
    lines.append(md_table(["member", "mode", "tok/s", "x", "x clean", "s/step", "CPU s/step", "others"], rows))
    lines += ["", "Where the time of a step goes (torch profiler, 3 steps of the profiled mode; share of the ops' "
              "self time):", ""]
    for row in res["family"]:
        shares = ", ".join(f"{name} {share:.0%}" for name, share in row["profile"].items())
        lines.append(f"- {row['size']} (`{row['profiled_mode']}`): {shares}")
    impls = list(res["attention"][0]["ms"])
    lines += ["", "Causal attention alone at each member's shape (batch x heads x T x head_dim, float32), "
              "forward + backward, median ms: `sdpa` is what the model calls (PyTorch's CPU flash kernel), "
              "`sdpa_math` its math backend, `explicit` softmax(QK^T)V written out, then torch.compile'd. "
              "max |diff|: the largest difference of output and gradients from `sdpa`'s.", "",
              md_table(["member", "shape", *impls, "max abs diff"],
                       [[row['size'], 'x'.join(map(str, row['shape'])), *(f"{row['ms'][k]:.1f}" for k in impls),
                         f"{row['max_abs_diff']:.1e}"] for row in res["attention"]])]
    return "\n".join(lines) + "\n"


def _mode_words(mode: dict | None) -> str:
    if mode is None:
        return "(not run)"
    return (f"{'compiled' if mode['compile'] else 'eager'}, {'bf16 autocast' if mode['bf16'] else 'float32'}, "
            f"{'fused' if mode['fused'] else 'foreach'} AdamW, "
            f"{mode['threads'] or 'the default number of'} threads")


def run_cpu(args) -> None:
    modes = args.cpu_modes.split(",")
    resolved = {spec: dataclasses.asdict(StepMode.parse(spec)) for spec in modes}  # mistakes surface now
    res = {"machine": machine(), "steps": args.steps, "warmup": args.warmup, "modes": modes, "resolved": resolved}
    print(f"machine: {res['machine']}", flush=True)
    res["family"] = cpu_family_speed(args.sizes.split(","), modes, args.steps, args.warmup)
    res["attention"] = cpu_attention_speed(args.sizes.split(","), args.steps)
    save_results(args.out, "results_cpu", res, _md_cpu)
    print(_md_cpu(res))


def main():
    args = parse_args()
    args.sizes = args.sizes or ",".join(FAMILIES["tiny"])
    check_run(args.steps, args.warmup, args.sizes.split(","))
    run_cpu(args)


if __name__ == "__main__":
    run_cli(main)
