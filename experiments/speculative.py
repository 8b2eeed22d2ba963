"""
Speculative decoding within a trained family: every adjacent pair (the smaller member drafts for
the larger) and the smallest drafting for the largest, in the progressive and the independent
family of a run_family.sh run, greedy and at temperature 1. Writes speculative.json and
speculative.md (a table, with the command and the machine) to --out.

    nice python experiments/speculative.py --run runs/tiny/seed_1337 --out results

Timings are tokens/s of sample.py's generation (sample.bench): the target alone with its KV cache,
the draft alone, and speculative decoding; each the best of --repeats runs over the same prompts.
On CPU they count this process's CPU time on one thread (--clock cpu): on a shared machine wall
time mostly measures the other jobs, and models this small gain nothing from more threads.
"""
import argparse
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import sample  # noqa: E402
from checkpoint import size_name  # noqa: E402
from tokenizer import get_tokenizer  # noqa: E402
from util import ArgumentParser, UserError, atomic_write, md_table, pick_device, run_cli, write_json  # noqa: E402

# openings in the style of the training text (OpenStax textbooks)
PROMPTS = ["The mitochondria is", "Water boils at", "In this chapter, we will", "The derivative of a function"]
FAMILIES = ("progressive", "independent")
MODES = {"greedy": 0.0, "temperature 1": 1.0}
CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}


def pairs(members: list[Path]) -> list[tuple[Path, Path]]:
    """(draft, target): each member drafting for the next, and the smallest for the largest."""
    out = list(zip(members, members[1:]))
    return out + [(members[0], members[-1])] if len(members) > 2 else out


def machine(device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    load = os.getloadavg()[0]
    return (f"{os.cpu_count()}-core CPU ({platform.machine()}), torch {torch.__version__} with "
            f"{torch.get_num_threads()} thread(s), load average {load:.1f} at the start (a shared machine)")


def measure(run: Path, args, device) -> list[dict]:
    rows = []
    for family in FAMILIES:
        for draft_path, target_path in pairs(sample.family_members(run / family)):
            target, draft = sample.load_pair(target_path, draft_path, device)
            tok = get_tokenizer(target.cfg.tokenizer)
            prompts = [torch.tensor(tok.encode(p)) for p in PROMPTS]
            for mode, temperature in MODES.items():
                r = sample.bench(draft, target, prompts, args.tokens, args.k, temperature, seed=args.seed,
                                 n_vocab=tok.vocab_size, repeats=args.repeats, clock=CLOCKS[args.clock])
                row = {"family": family, "draft": size_name(draft.cfg),
                       "target": size_name(target.cfg), "mode": mode, **r}
                print(f"{family:11s} {row['draft']:>5s} -> {row['target']:5s} {mode:13s} "
                      f"plain {r['target_tokens_per_s']:7.1f} tok/s, speculative "
                      f"{r['speculative_tokens_per_s']:7.1f} tok/s ({r['speedup']:.2f}x), "
                      f"acceptance {r['acceptance']:.1%}", flush=True)
                rows.append(row)
    return rows


def cost_ratio(row) -> float:
    """c: the draft's time per token over the target's (Leviathan et al.'s c)."""
    return row["target_tokens_per_s"] / row["draft_tokens_per_s"]


def markdown(result: dict) -> str:
    k, rows = result["k"], result["rows"]
    cells = []
    for r in rows:
        c = cost_ratio(r)
        cells.append([r['family'], f"{r['draft']} → {r['target']}", r['mode'], f"{r['target_tokens_per_s']:.0f}",
                      f"{r['draft_tokens_per_s']:.0f}", f"{c:.2f}", f"{r['speculative_tokens_per_s']:.0f}",
                      f"{r['speedup']:.2f}×", f"{r['acceptance']:.1%}", f"{r['tokens_per_round']:.2f}",
                      f"{r['tokens_per_round'] / (k * c + 1):.2f}×"])
    table = md_table(["family", "draft → target", "mode", "plain tok/s", "draft alone tok/s", "c", "speculative tok/s",
                      "speedup", "acceptance", "tokens per target forward", "predicted speedup"], cells)
    faster = [r for r in rows if r["speedup"] > 1]
    cs = [cost_ratio(r) for r in rows]
    best = max(rows, key=lambda r: r["speedup"])
    clock = {"cpu": "CPU time of this process on one thread", "wall": "wall time"}[result["clock"]]
    text = [
        f"Speculative decoding was faster than plain decoding in {len(faster)} of {len(rows)} rows "
        f"(best: {best['family']} {best['draft']} → {best['target']} {best['mode']}, {best['speedup']:.2f}×). "
        f"A round pays k draft forwards and one target forward for its tokens, so it gains only where "
        f"tokens per target forward exceed k·c + 1 (predicted speedup > 1); c is {min(cs):.2f} to "
        f"{max(cs):.2f} here, while the method is made for c ≪ 1."]
    if min(cs) > 0.3:
        by_size = {}
        for r in rows:
            by_size.setdefault(r["target"], []).append(r["target_tokens_per_s"])
        text.append(
            "A draft is hardly cheaper than its target because a forward pass of a model this small "
            "costs per-call overhead (Python, the dispatch of a dozen small ops per layer, the cache's "
            "concatenations) more than arithmetic: plain tokens/s of the targets "
            f"({', '.join(f'{s} {max(v):.0f}' for s, v in by_size.items())}) fall far less than their "
            "parameter counts grow. Where a target forward is bound by memory traffic or arithmetic and "
            "the draft is much smaller (large models), c is small and the same acceptance pays.")
    if any(r["mode"] == "greedy" and r["acceptance"] >= 0.95 for r in rows):
        text.append("Greedy acceptance near 100% means draft and target fell into the same loop: the small "
                    "members, decoding greedily, repeat themselves (`python sample.py --ckpt "
                    "RUN/progressive/ckpt_50k.pt --prompt \"Water boils at\" --temperature 0`).")
    return "\n".join([
        "# Speculative decoding in a trained family",
        "",
        f"Made by `{result['command']}` on {result['machine']}, {result['date']}.",
        f"k = {k} drafts per round; {len(result['prompts'])} prompts × {result['tokens']} new tokens; "
        f"tokens/s in {clock}, the best of {result['repeats']} turns. Plain = the target alone with its KV "
        "cache; c = the draft's time per token / the target's; predicted speedup = tokens per target "
        "forward / (k·c + 1), the cost model of Leviathan et al.",
        "",
        table,
        "",
        "\n\n".join(text),
        "",
    ])


def main(argv=None):
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a seed folder of run_family.sh: RUN/progressive/ckpt_<size>.pt "
                                                "and RUN/independent/ckpt_<size>.pt")
    p.add_argument("--out", default="results", help="folder for speculative.json and speculative.md")
    p.add_argument("--k", type=int, default=4, help="tokens the draft proposes per round")
    p.add_argument("--tokens", type=int, default=96, help="new tokens per prompt")
    p.add_argument("--repeats", type=int, default=3, help="timed runs of each way; the best counts")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling")
    p.add_argument("--device", default="cpu", help="cpu, cuda, ...")
    p.add_argument("--clock", choices=CLOCKS, default="cpu",
                   help="cpu: this process's CPU time on one thread (CPU only); wall: wall time, all threads")
    args = p.parse_args(argv)
    for flag in ("k", "tokens", "repeats"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag} must be >= 1")
    run, device = Path(args.run), pick_device(args.device)
    if args.clock == "cpu":
        if device.type != "cpu":
            raise UserError("--clock cpu times CPU work only; on a GPU use --clock wall")
        torch.set_num_threads(1)
    command = shlex.join(["python", "experiments/speculative.py", *(sys.argv[1:] if argv is None else argv)])
    result = {"command": command, "machine": machine(device), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "k": args.k, "tokens": args.tokens, "repeats": args.repeats, "clock": args.clock,
              "prompts": PROMPTS}
    result["rows"] = measure(run, args, device)
    out = Path(args.out)
    write_json(out / "speculative.json", result)
    atomic_write(out / "speculative.md", lambda f: f.write(markdown(result)), mode="w")
    print(f"wrote {out / 'speculative.json'} and {out / 'speculative.md'}")


if __name__ == "__main__":
    run_cli(main)
