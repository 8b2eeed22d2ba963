"""
Are progressively trained members more consistent with each other than independent ones, once
quality is matched? A progressive member and its independent counterpart end at different losses,
and the KL between two members grows with the gap between their losses; so besides the two families
at their planned budgets, each progressive pair is compared with the independent members' curve
points (experiments/equal_loss.py curves: decay branches at 0.5 .. 2x the budget) whose final losses
are closest to the progressive members'.

    python experiments/consistency.py --out runs/equal_loss --seeds 1 2 3   # -> results/runs/consistency.json

For every pair, the smaller member drafting for the larger (each adjacent pair, and the smallest
for the largest), on the same validation windows: KL(L||S) and KL(S||L) per token, each member's
loss there, KL(L||S) minus the loss gap (loss_S - loss_L: what KL(L||S) would be if the larger
member were the data's distribution, so the rest is disagreement beyond quality), and speculative
decoding's acceptance (sample.py; greedy and temperature 1, k drafted tokens a round).
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import equal_loss  # noqa: E402  experiments/equal_loss.py: the recipe and the finished curve runs
from checkpoint import load_model  # noqa: E402
from data import open_split, val_windows  # noqa: E402
from evaluate import pair_kl  # noqa: E402
from sample import speculative_acceptance  # noqa: E402
from speculative import pairs  # noqa: E402  each adjacent pair, and the smallest for the largest
from util import ArgumentParser, UserError, md_table, run_cli, write_json  # noqa: E402

# the three ways of choosing a family's members: the progressive family as trained, the independent
# members at their planned budgets, and the independent curve points that match the progressive loss
CHOICES = ("progressive", "independent", "independent, matched")


def parse_args(argv=None):
    ap = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/equal_loss", help="equal_loss.py's run folder (default runs/equal_loss)")
    ap.add_argument("--data", default="data/openstax_bytes", help="folder from data/prepare.py (its val split)")
    ap.add_argument("--family", default="tiny", help="family of model.py the curves were run for (default tiny)")
    ap.add_argument("--chinchilla", type=float, default=1.0, help="the curves' x 20 tokens/param (default 1)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="seeds of the curves (default 1 2 3)")
    ap.add_argument("--results", default="results/runs/consistency.json", help="output JSON")
    ap.add_argument("--val_tokens", type=int, default=65536, help="validation tokens for KL and loss (default 65536)")
    ap.add_argument("--spec_prompts", type=int, default=8, help="validation windows used as prompts (default 8)")
    ap.add_argument("--spec_tokens", type=int, default=64, help="tokens generated after each prompt (default 64)")
    ap.add_argument("--spec_k", type=int, default=4, help="tokens drafted a round (default 4)")
    return ap.parse_args(argv)


def closest(runs: dict, loss: float) -> dict:
    """The curve point (run of {multiple: run}) whose final loss is closest to `loss`."""
    return min(runs.values(), key=lambda r: abs(r["val_loss"] - loss))


def chosen_members(seed_runs: dict, sizes: list[str]) -> dict:
    """{choice: {size: run}} for one seed (seed_runs: equal_loss.by_seed's, every member complete)."""
    prog = {z: seed_runs["progressive"][z][1.0] for z in sizes}
    return {"progressive": prog,
            "independent": {z: seed_runs["independent"][z][1.0] for z in sizes},
            "independent, matched": {z: closest(seed_runs["independent"][z], prog[z]["val_loss"]) for z in sizes}}


@torch.inference_mode()
def measure_pair(small, large, windows: torch.Tensor, args) -> dict:
    kl = pair_kl(small, large, windows, 32)
    prompts = windows[:args.spec_prompts, :small.cfg.block_size // 2]
    spec = {mode: speculative_acceptance(small, large, prompts, args.spec_tokens, args.spec_k, t, seed=0)["acceptance"]
            for mode, t in (("greedy", 0.0), ("sampling", 1.0))}
    return {"kl_large_small": kl["kl_large_small"], "kl_small_large": kl["kl_small_large"],
            "loss_small": kl["loss_small"], "loss_large": kl["loss_large"],
            "kl_minus_gap": kl["kl_large_small"] - (kl["loss_small"] - kl["loss_large"]), "acceptance": spec}


def measure(args) -> dict:
    out = Path(args.out)
    results = {"recipe": equal_loss.recipe(args), "curves": []}
    rec = results["recipe"]
    results["curves"] = [r for r in equal_loss.finished_runs(out, rec, "curves") if r["settings"] == "plan"]
    seeds = equal_loss.by_seed(results, "plan")
    sizes = [st["size"] for st in rec["progressive"]]
    complete = [s for s in args.seeds if s in seeds and all(
        len(seeds[s].get(f, {}).get(z, {})) == len(equal_loss.MULTIPLES) for f in ("progressive", "independent")
        for z in sizes)]
    if not complete:
        raise UserError(f"no seed of {args.seeds} has every member's curves in {out}; run "
                        f"`experiments/equal_loss.py curves --settings plan` first")
    val, _ = open_split(args.data, "val")
    models, windows, rows = {}, {}, []

    def model(run):
        path = Path(run["dir"]) / "ckpt.pt"
        if path not in models:
            models[path] = load_model(path, "cpu", use_kernels=False)[0]
        return models[path]

    for seed in complete:
        members = chosen_members(seeds[seed], sizes)
        for choice in CHOICES:
            for small_z, large_z in pairs(sizes):
                small, large = members[choice][small_z], members[choice][large_z]
                block = model(large).cfg.block_size
                if block not in windows:
                    windows[block] = val_windows(val, block, args.val_tokens)
                row = {"seed": seed, "choice": choice, "small": small_z, "large": large_z,
                       "multiple_small": small["multiple"], "multiple_large": large["multiple"],
                       **measure_pair(model(small), model(large), windows[block], args)}
                print(f"seed {seed} {choice:21s} {small_z:>4s} -> {large_z:4s}: KL(L||S) {row['kl_large_small']:.4f}"
                      f" - gap {row['loss_small'] - row['loss_large']:.4f} = {row['kl_minus_gap']:.4f}, greedy "
                      f"acceptance {row['acceptance']['greedy']:.3f}", flush=True)
                rows.append(row)
        models.clear()
    return {"family": args.family, "chinchilla": args.chinchilla, "val_tokens": args.val_tokens,
            "spec": {"prompts": args.spec_prompts, "tokens": args.spec_tokens, "k": args.spec_k},
            "data": Path(args.data).name, "seeds": complete, "rows": rows}


def tables(data: dict) -> str:
    """The consistency section of RESULTS.md: per pair, each choice's mean ± half the range over seeds."""
    mean_spread = equal_loss._mean_spread
    order = []
    for r in data["rows"]:
        if (r["small"], r["large"]) not in order:
            order.append((r["small"], r["large"]))

    def cell(pair, choice, get, fmt="{:.3f}"):
        xs = [get(r) for r in data["rows"] if (r["small"], r["large"]) == pair and r["choice"] == choice]
        return mean_spread(xs, 1, fmt)

    def differences(pair, get):  # per seed: progressive - independent, matched
        rows = {(r["seed"], r["choice"]): r for r in data["rows"] if (r["small"], r["large"]) == pair}
        return [get(rows[seed, CHOICES[0]]) - get(rows[seed, CHOICES[2]]) for seed in data["seeds"]]

    def table(title, get):
        return md_table(["pair"] + [f"{title}, {c}" for c in CHOICES],
                        [[f"{s} → {l}"] + [cell((s, l), c, get) for c in CHOICES] for s, l in order])

    matched = [(r["multiple_small"], r["multiple_large"]) for r in data["rows"] if r["choice"] == CHOICES[2]]
    return "\n".join([
        f"Seeds {', '.join(map(str, data['seeds']))}; mean ± half the range over seeds. The same "
        f"{data['val_tokens']:,} validation tokens for every pair; KL and losses in nats per token (byte). "
        f"\"independent, matched\": the independent members' curve points (0.5–2× their budgets) whose final "
        f"losses are closest to the progressive members' (budgets used: "
        + ", ".join(sorted({f"{a:g}×/{b:g}×" for a, b in matched})) + ").", "",
        table("KL(L‖S)", lambda r: r["kl_large_small"]), "",
        "KL(L‖S) minus the loss gap (loss of the smaller member − loss of the larger, on the same tokens): the "
        "disagreement beyond the difference in quality.", "",
        table("KL − gap", lambda r: r["kl_minus_gap"]), "",
        f"Speculative decoding, the smaller member drafting {data['spec']['k']} tokens a round for the larger, "
        f"{data['spec']['prompts']} prompts × {data['spec']['tokens']} tokens: acceptance, greedy.", "",
        table("acceptance", lambda r: r["acceptance"]["greedy"]), "",
        "The same at temperature 1 (rejection sampling).", "",
        table("acceptance", lambda r: r["acceptance"]["sampling"]), "",
        "Progressive minus independent at matched quality, seed by seed (seeds " + ", ".join(map(str, data["seeds"]))
        + "): below 0 for KL − gap, above 0 for acceptance, the progressive pair is the more consistent.", "",
        md_table(["pair", "KL − gap", "acceptance, greedy", "acceptance, temperature 1"],
                 [[f"{s} → {l}"] + [", ".join(f"{d:+.3f}" for d in differences((s, l), get)) for get in (
                     lambda r: r["kl_minus_gap"], lambda r: r["acceptance"]["greedy"],
                     lambda r: r["acceptance"]["sampling"])] for s, l in order])])


def main(argv=None):
    args = parse_args(argv)
    if not (Path(args.data) / "meta.json").exists():
        raise UserError(f"{args.data} is not a prepared data folder; run data/prepare.py (as run_family.sh does)")
    torch.set_num_threads(1)
    data = measure(args)
    write_json(args.results, data)
    print(f"wrote {args.results}: {len(data['rows'])} pairs")


if __name__ == "__main__":
    run_cli(main)
