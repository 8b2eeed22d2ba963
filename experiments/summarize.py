"""
Turn measured runs into RESULTS.md's measured sections (the prose around them is kept) and figures.

    python experiments/summarize.py --runs results/runs   # the committed results: the equal-loss section
    python experiments/summarize.py --runs runs/exp       # the reports of experiments/reproduce.sh

A folder holding equal_loss.json (experiments/equal_loss.py collect) rewrites the section between
`<!-- equal-loss:begin -->` and `<!-- equal-loss:end -->` and results/equal_loss.png (and, with
consistency.json from experiments/consistency.py, the section between `<!-- consistency:begin -->`
and `<!-- consistency:end -->`; with other settings' equal_loss_*.json, the section between
`<!-- trend:begin -->` and `<!-- trend:end -->` and results/equal_loss_trend.png); one holding
*/seed_*/report/report.json rewrites the section between `<!-- results:begin -->` and
`<!-- results:end -->`, results/loss_vs_flops.png and results/recipes.png.
"""
import argparse
import json
import re
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import checkpoint  # noqa: E402
from expand import twins  # noqa: E402
from util import ArgumentParser, UserError, atomic_write, md_table, run_cli  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
EQ_BEGIN, EQ_END = "<!-- equal-loss:begin -->", "<!-- equal-loss:end -->"
KL_BEGIN, KL_END = "<!-- consistency:begin -->", "<!-- consistency:end -->"
TREND_BEGIN, TREND_END = "<!-- trend:begin -->", "<!-- trend:end -->"


def load_reports(runs: Path) -> dict:
    """{run name: [report of each seed]}"""
    out = {}
    for path in sorted(runs.glob("*/seed_*/report/report.json"), key=lambda p: (p.parts[-4], _seed(p))):
        report = json.loads(path.read_text())
        report["seed"] = _seed(path)
        out.setdefault(path.parts[-4], []).append(report)
    if not out:
        raise UserError(f"no report.json under {runs}/*/seed_*/report; run experiments/reproduce.sh first")
    return out


def _seed(report_path: Path) -> int:
    return int(report_path.parts[-3].removeprefix("seed_"))


def members(reports, family="progressive") -> dict:
    """{size: [member dict of each seed]}"""
    out = {}
    for r in reports:
        for m in r["members"]:
            if m["family"] == family:
                out.setdefault(m["name"], []).append(m)
    return out


def mean_spread(xs, fmt="{:.3f}") -> str:
    """mean ± half the range over seeds (just the value for one seed)."""
    if len(xs) == 1:
        return fmt.format(xs[0])
    return f"{fmt.format(statistics.mean(xs))} ± {fmt.format((max(xs) - min(xs)) / 2)}"


def val_curve(member) -> list[tuple[float, float]]:
    """(lineage FLOPs, val loss) at each validation of a member's training, from its history."""
    return [(h["flops_total"], h["val_loss"]) for h in member.get("history", []) if "val_loss" in h]


def growth_losses(member) -> tuple:
    """(val loss right after growth, final val loss) of a stage, from its training history."""
    vals = [loss for _, loss in val_curve(member)]
    return (vals[0], vals[-1]) if vals else (None, None)


def recipes(rep) -> list[tuple[str, list, str]]:
    """(label, reports, family) of every recipe run over several seeds; those not run are empty."""
    return [("progressive, adjusted LR", rep["main_adjusted"], "progressive"),
            ("progressive, fixed LR", rep.get("main_fixed", []), "progressive"),
            ("independent, adjusted LR", rep["main_adjusted"], "independent"),
            ("progressive, WSD, adjusted LR", rep.get("beyond_wsd", []), "progressive"),
            ("independent, WSD, adjusted LR", rep.get("beyond_wsd", []), "independent")]


def twins_left(member) -> int | None:
    """Copies of a grown member that are still twins of their source at the end of its stage (from
    its report, or its checkpoint); None for a member that was not grown or whose checkpoint is gone."""
    if "twins" in member:
        return sum(r["twins"] for r in member["twins"])
    path = Path(member.get("path", ""))
    path = path if path.is_absolute() else ROOT / path
    if not path.is_file():
        return None
    ckpt = checkpoint.load(path, mmap=True)
    return sum(r["twins"] for r in twins(ckpt)) if (ckpt.get("meta") or {}).get("expansion") else None


def main_table(rep) -> str:
    rows = []
    sizes = list(members(rep["main_adjusted"]))
    for size in sizes:
        for label, reports, fam in recipes(rep):
            ms = members(reports, fam).get(size)
            if not ms or (size == sizes[0] and fam == "progressive"):  # the smallest is trained alone
                continue
            rows.append([size, label, str(len(ms)), mean_spread([m['ppl']['loss'] for m in ms]),
                         mean_spread([m['ppl']['bpb'] for m in ms]),
                         mean_spread([100 * m['average'] for m in ms], '{:.1f}'),
                         f"{statistics.mean(m['flops_total'] for m in ms):.3g}"])
    return md_table(["member", "family", "seeds", "val loss (nats/byte)", "bits per byte",
                     "avg zero-shot acc %", "FLOPs"], rows)


def flops_line(reports) -> str:
    f = [r["flops"] for r in reports]
    return (f"progressive family {statistics.mean(x['progressive'] for x in f):.4g} FLOPs, independent "
            f"{statistics.mean(x['independent'] for x in f):.4g}: **saving "
            f"{100 * statistics.mean(x['saving'] for x in f):.1f}%** (planned "
            f"{100 * f[0]['planned']['saving']:.1f}%)")


def pairs_table(reports) -> str:
    rows = []
    by = {}
    for r in reports:
        for p in r["pairs"]:
            by.setdefault((p["small"], p["large"]), {}).setdefault(p["family"], []).append(p)
    for (s, l), fams in by.items():
        def col(fam, get, fmt="{:.3f}"):
            ps = fams.get(fam, [])
            return mean_spread([get(p) for p in ps], fmt) if ps else "-"
        rows.append([f"{s} → {l}", col('progressive', lambda p: p['kl']['kl_large_small']),
                     col('independent', lambda p: p['kl']['kl_large_small']),
                     col('progressive', lambda p: 100 * p['spec']['sampling']['acceptance'], '{:.1f}'),
                     col('independent', lambda p: 100 * p['spec']['sampling']['acceptance'], '{:.1f}'),
                     col('progressive', lambda p: 100 * p['spec']['greedy']['acceptance'], '{:.1f}'),
                     col('independent', lambda p: 100 * p['spec']['greedy']['acceptance'], '{:.1f}')])
    return md_table(["pair", "KL(L‖S) progressive", "KL(L‖S) independent", "spec. acceptance progressive",
                     "spec. acceptance independent", "greedy acceptance progressive",
                     "greedy acceptance independent"], rows)


def variants_table(rep, names: dict, equal_split: dict) -> str:
    """Seed-1 progressive runs side by side: loss right after growth -> final loss, per member; the
    largest member's with the twin growth of results/twin_growth.json where it was measured."""
    sizes = list(members(rep["main_adjusted"]))
    head = (["run"] + [f"{s}: after growth → final" for s in sizes]
            + [f"{sizes[-1]} with twin growth", "family FLOPs", "twins left"])
    indep = members(rep["main_adjusted"], "independent")
    rows = [["independent (from scratch)"] + [f"{indep[s][0]['ppl']['loss']:.3f}" if s in indep else "-"
                                             for s in sizes]
            + ["-", f"{rep['main_adjusted'][0]['flops']['independent']:.3g}", "-"]]
    for name, label in names.items():
        if name not in rep:
            continue
        ms = members(rep[name][:1])
        cells = []
        for s in sizes:
            if s not in ms:
                cells.append("skipped")
                continue
            after_growth = growth_losses(ms[s][0])[0] if s != next(iter(ms)) else None  # first: not grown
            cells.append((f"{after_growth:.3f} → " if after_growth is not None else "")
                         + f"{ms[s][0]['ppl']['loss']:.3f}")
        twin = equal_split["after_growth_seed1"].get(name, {}).get(sizes[-1])
        left = [n for m in ms.values() if (n := twins_left(m[0])) is not None]
        rows.append([label] + cells + [f"{twin[0]:.3f} → {twin[1]:.3f}" if twin else "-",
                                       f"{rep[name][0]['flops']['progressive']:.3g}", str(sum(left)) if left else "-"])
    return md_table(head, rows)


def per_seed_table(rep, name: str, reference: str = "main_adjusted", smallest: bool = True) -> str:
    """Final val loss of run `name` against the independent members of run `reference`, seed by
    seed (same seed: same smallest member and data order), and in how many seeds the run ended lower.
    The smallest member is trained alone, the same model in both families: one row with its loss, or
    none (smallest=False) where another table already shows that model."""
    indep = {r["seed"]: {m["name"]: m for m in r["members"] if m["family"] == "independent"}
             for r in rep[reference]}
    runs = {r["seed"]: {m["name"]: m for m in r["members"] if m["family"] == "progressive"} for r in rep[name]}
    seeds = sorted(s for s in runs if s in indep)
    rows = []
    sizes = list(runs[seeds[0]])
    if smallest:
        rows.append([sizes[0]] + [f"{runs[s][sizes[0]]['ppl']['loss']:.3f} (trained alone)" for s in seeds] + ["-"])
    for size in sizes[1:]:
        pairs = [(runs[s][size]["ppl"]["loss"], indep[s][size]["ppl"]["loss"]) for s in seeds if size in indep[s]]
        cells = [f"{a:.3f} vs {b:.3f} ({a - b:+.3f})" for a, b in pairs]
        rows.append([size] + cells + [f"{sum(a < b for a, b in pairs)} of {len(pairs)}"])
    return md_table(["member"] + [f"seed {s}: run vs independent" for s in seeds] + ["lower in"], rows)


def lead_table(rep, name: str, size: str) -> str:
    """For a member that costs the same FLOPs in both families (the largest): at each validation of
    the grown member, its loss minus the independent one's at the same FLOPs (interpolated), seed by
    seed: the largest lead, and from which share of the budget on the independent one stays lower."""
    rows = []
    for r in rep[name]:
        curves = {m["family"]: val_curve(m) for m in r["members"] if m["name"] == size}
        prog, indep = curves.get("progressive"), curves.get("independent")
        if not prog or not indep:
            continue
        budget = prog[-1][0]
        gaps = [(f / budget, loss - float(np.interp(f, *zip(*indep)))) for f, loss in prog]
        share, lead = min(gaps, key=lambda g: g[1])
        behind = next((g[0] for i, g in enumerate(gaps) if all(x[1] > 0 for x in gaps[i:])), None)
        rows.append([str(r['seed']), f"{-lead:.3f} ({100 * share:.0f}%)",
                     f"{100 * behind:.0f}%" if behind is not None else "never"])
    return md_table(["seed", "largest lead of the grown member (at % of the budget)", "independent lower from"], rows)


TWIN_GROWTH = ROOT / "results" / "twin_growth.json"


def twin_table(rep, equal_split: dict) -> str:
    """The ablation of symmetry breaking: the same recipes, seeds and data grown with the equal split
    (copies stay twins; results/twin_growth.json) and with the noisy split: val loss right after
    growth → final of seed 1, and the final loss over seeds; then how many copies of the noisy-split
    runs are still twins at the end of each stage."""
    def noisy_seed1(name, size):
        ms = members(rep.get(name, [])[:1]).get(size)
        return f"{growth_losses(ms[0])[0]:.3f} → {ms[0]['ppl']['loss']:.3f}" if ms else "-"

    def twin_seed1(name, size):
        v = equal_split["after_growth_seed1"].get(name, {}).get(size)
        return f"{v[0]:.3f} → {v[1]:.3f}" if v else "-"

    def noisy_final(name, size, family="progressive"):
        ms = members(rep.get(name, []), family).get(size)
        return mean_spread([m["ppl"]["loss"] for m in ms]) if ms else "-"

    def twin_final(name, size, family="progressive"):
        v = equal_split["final"].get(name, {}).get(family, {}).get(size)
        return mean_spread(v) if v else "-"

    def left(size):
        counts = [twins_left(m) for name in ("main_adjusted", "main_fixed", "beyond_wsd")
                  for m in members(rep.get(name, [])).get(size, [])]
        counts = [n for n in counts if n is not None]
        return f"{sum(counts)} in {len(counts)} runs" if counts else "-"

    pairs = [("AKI, seed 1, after growth → final", "main_adjusted", twin_seed1, noisy_seed1),
             ("FPI, seed 1, after growth → final", "growth_fpi", twin_seed1, noisy_seed1),
             ("AKI, cosine, adjusted LR, final", "main_adjusted", twin_final, noisy_final),
             ("AKI, cosine, fixed LR, final", "main_fixed", twin_final, noisy_final),
             ("AKI, WSD, final", "beyond_wsd", twin_final, noisy_final)]
    pairs = [p for p in pairs if p[1] in rep]
    rows = [[size] + [cell for _, name, twin, noisy in pairs for cell in (twin(name, size), noisy(name, size))]
            + [left(size)] for size in list(members(rep["main_adjusted"]))[1:]]
    indep = [f"{size} {twin_final(name, size, 'independent')} beside the equal-split runs, "
             f"{noisy_final(name, size, 'independent')} beside the noisy-split ones"
             for name in ("main_adjusted", "beyond_wsd") if name in rep
             for size in list(members(rep[name], "independent"))[-1:]]
    header = (["member"] + [cell for label, *_ in pairs for cell in (f"{label}: equal split", "noisy split")]
              + ["twins left, noisy split"])
    return md_table(header, rows) + ("\n\nThe largest independent member, which involves no growth, trained with each "
                              "(cosine, then WSD): "
                              + "; ".join(indep) + "." if indep else "")


def _has_independent(rep, name: str) -> bool:
    return any(m["family"] == "independent" for r in rep.get(name, []) for m in r["members"])


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    return plt


def _save_figure(plt, fig, path: Path):
    fig.tight_layout()
    path.parent.mkdir(exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot(rep, path: Path):
    """Val loss against the lineage's FLOPs during training, seed 1: the paper's cosine recipe and,
    where it was run, WSD for both families."""
    plt = _pyplot()
    panels = [(name, title) for name, title in (("main_adjusted", "cosine, adjusted LR"),
                                                 ("beyond_wsd", "WSD in every stage and member"))
              if _has_independent(rep, name)]
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 5), sharey=True, squeeze=False)
    for ax, (name, title) in zip(axes[0], panels):
        r = rep[name][0]
        for fam, style in (("progressive", "-"), ("independent", "--")):
            for m in (m for m in r["members"] if m["family"] == fam):
                curve = [(f, loss) for f, loss in val_curve(m) if f > 0]  # log axis
                ax.plot(*zip(*curve), style, label=f"{fam} {m['name']}")
        ax.set(xscale="log", xlabel="cumulative training FLOPs (family lineage)", title=f"seed {r['seed']}: {title}")
        ax.legend(fontsize=7, ncol=2)
    axes[0][0].set_ylabel("val loss (nats/byte)")
    fig.suptitle("tiny family: progressive (AKI, adjusted LR, solid) vs trained alone (dashed)", fontsize=10)
    _save_figure(plt, fig, path)


def plot_recipes(rep, path: Path):
    """Final val loss of every seed (dots) and their mean (bar) per recipe, one panel per grown member."""
    plt = _pyplot()
    runs = [(label, members(reports, fam)) for label, reports, fam in recipes(rep) if reports]
    runs = [(label, ms) for label, ms in runs if any(ms.values())]
    sizes = list(members(rep["main_adjusted"]))[1:]  # the smallest is the same model in every recipe
    fig, axes = plt.subplots(1, len(sizes), figsize=(4 * len(sizes), 5), sharex=True, squeeze=False)
    for ax, size in zip(axes[0], sizes):
        for i, (label, ms) in enumerate(runs):
            losses = [m["ppl"]["loss"] for m in ms.get(size, [])]
            if not losses:
                continue
            color = "0.35" if label.startswith("independent") else "tab:blue"
            ax.scatter([i] * len(losses), losses, s=14, color=color, zorder=2)
            ax.hlines(statistics.mean(losses), i - 0.3, i + 0.3, color=color, lw=2)
        ax.set(title=size, ylabel="final val loss (nats/byte)" if size == sizes[0] else None)
        ax.set_xticks(range(len(runs)), [label for label, _ in runs], rotation=60, ha="right", fontsize=7)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("every seed: progressive recipes (blue) against members trained alone (grey)", fontsize=10)
    _save_figure(plt, fig, path)


def wsd_section(rep, largest: str) -> list[str]:
    """The WSD comparisons, where beyond_wsd trained independent members; else nothing."""
    if not _has_independent(rep, "beyond_wsd"):
        return []
    parts = ["WSD schedule (warmup, constant, linear decay over the last 20%) in every stage and every "
             "independent member alike, adjusted LR:", "", per_seed_table(rep, "beyond_wsd", "beyond_wsd"), "",
             f"The {largest} curves under WSD (validation during training; both cost the same FLOPs):", "",
             lead_table(rep, "beyond_wsd", largest), ""]
    return parts


def render(rep, runs: Path) -> str:
    main = rep["main_adjusted"]
    seeds, largest = len(main), list(members(main))[-1]
    equal_split = json.loads(TWIN_GROWTH.read_text())
    parts = [
        f"Measured with `bash experiments/reproduce.sh` then `python experiments/summarize.py --runs {runs}` "
        f"on the 2-core CPU machine (byte-level OpenStax, tiny family, 1x Chinchilla, {seeds} seeds for the "
        "main runs, 1 for the ablations; ± is half the range over seeds). Zero-shot items: "
        f"{main[0]['settings']['limit']} per task; at this size no task beats guessing (25% for the 4-way "
        "tasks, 50% for WinoGrande and PIQA, 0 for LAMBADA: 28.6% on average), so accuracy differences are noise.",
        "",
        "**FLOPs.** " + flops_line(main) + ".",
        "",
        "### Ablation: copies that stay twins", "",
        "Validation loss with the equal split, whose copies stay exact twins of their source (consumers "
        "split equally among copies, AKI on new heads and FFN units only: `expand.py` of commit "
        f"{equal_split['commit']}; numbers in `results/twin_growth.json`), and with the noisy split (`--noise 0.1`, "
        "AKI on every output dimension), the same recipes, seeds and data. Twins left: copies still within "
        "1e-6 of their source after the stage (`expand.py --inspect`), summed over the main runs' seeds.", "",
        twin_table(rep, equal_split), "",
        "### Members", "",
        f"The smallest member ({next(iter(members(main)))}) is trained alone in every recipe: its rows are the "
        "independent ones.", "",
        main_table(rep), "",
        "![final val loss per recipe and seed](results/recipes.png)", "",
        "Seed by seed, final val loss of each progressive member against the independent member of the "
        "same seed (the smallest member is the same model in both families). Adjusted LR:", "",
        per_seed_table(rep, "main_adjusted"), "",
        *(["Fixed LR (its smallest member is the adjusted schedule's: same LR, seed and data):", "",
           per_seed_table(rep, "main_fixed", smallest=False), ""] if "main_fixed" in rep else []),
        *wsd_section(rep, largest),
        "### Consistency between adjacent members", "",
        "KL in nats per byte on the same validation bytes; acceptance in % of drafted tokens (k = 4).", "",
        pairs_table(main), "",
        "### Growth function and expansion ratio (seed 1, same budget)", "",
        "Validation loss of each member right after it was grown → after its stage "
        "(the independent row: trained from scratch); twins left: copies of the grown members still "
        "equal to their source at the end of their stages.", "",
        variants_table(rep, {"main_adjusted": "AKI, depth stack (paper)", "growth_fpi": "FPI (noisy split), depth stack",
                             "growth_fpi_twins": "FPI, equal split (noise 0): copies stay twins",
                             "growth_aki_top_below": "AKI, top block's new rows from the block below",
                             "growth_aki_optstate": "AKI + grown AdamW state",
                             "ratio_4x_jump": "4x jump 50k → 250k (skips 120k), depth stack",
                             "depth_4x_interpolate": "4x jump, depth interpolate (2 → 4 blocks: 0011)",
                             "depth_4x_zero": "4x jump, depth zero (new blocks start as identity)"}, equal_split), "",
        "![loss vs FLOPs](results/loss_vs_flops.png)",
    ]
    return "\n".join(parts)


def replace_section(path: str, begin: str, end: str, body: str):
    if not Path(path).is_file():
        raise UserError(f"--results {path} does not exist; give the file whose results section to replace")
    text = Path(path).read_text()
    if begin not in text or end not in text:
        raise UserError(f"{path} has no {begin} ... {end} section")
    new = f"{begin}\n{body}\n{end}"
    atomic_write(path, lambda f: f.write(re.sub(f"{begin}.*?{end}", lambda _: new, text, flags=re.S)), mode="w")


def equal_loss_section(runs: Path, results: str, figures: Path):
    import equal_loss  # experiments/equal_loss.py, beside this file
    data = json.loads((runs / "equal_loss.json").read_text())
    equal_loss.plot(data, figures / "equal_loss.png")
    replace_section(results, EQ_BEGIN, EQ_END, equal_loss.tables(data))
    print(f"updated {results} (equal-loss section) and {figures / 'equal_loss.png'}")
    if (runs / "consistency.json").is_file():
        import consistency  # experiments/consistency.py: KL and acceptance at matched quality
        replace_section(results, KL_BEGIN, KL_END, consistency.tables(json.loads((runs / "consistency.json").read_text())))
        print(f"updated {results} (consistency section)")
    settings = sorted(runs.glob("equal_loss_*.json"))  # other families and budgets (equal_loss.py --results)
    if settings:
        every = [data] + [json.loads(p.read_text()) for p in settings]
        equal_loss.plot_trend(every, figures / "equal_loss_trend.png")
        replace_section(results, TREND_BEGIN, TREND_END, equal_loss.trend(every))
        print(f"updated {results} (trend section) and {figures / 'equal_loss_trend.png'}")


def main():
    ap = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default="results/runs",
                    help="results/runs (committed: equal_loss.json) or the folder of experiments/reproduce.sh")
    ap.add_argument("--results", "--readme", default=str(ROOT / "RESULTS.md"),
                    help="the file whose measured sections to replace (--readme: the same flag)")
    ap.add_argument("--figures", default=str(ROOT / "results"), help="folder of the figures (default results/)")
    args = ap.parse_args()
    figures = Path(args.figures)
    runs = Path(args.runs)
    if (runs / "equal_loss.json").is_file():
        equal_loss_section(runs, args.results, figures)
        if not any(runs.glob("*/seed_*/report/report.json")):
            return
    rep = load_reports(runs)
    if "main_adjusted" not in rep:
        raise UserError("the main_adjusted run is missing; it is the reference of every table")
    plot(rep, figures / "loss_vs_flops.png")
    plot_recipes(rep, figures / "recipes.png")
    replace_section(args.results, BEGIN, END, render(rep, runs))
    print(f"updated {args.results}, {figures / 'loss_vs_flops.png'} and {figures / 'recipes.png'}")


if __name__ == "__main__":
    run_cli(main)
