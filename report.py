"""
The report of a family evaluation: the summary over seeds (mean ± standard deviation), the verdict
(FLOPs saved, progressive − independent loss, zero-shot accuracy against chance), report.md's
tables, the plots, and --combine, which pools the report.json of several seeds of one family and
plan. Reads only report dicts (evaluate.py's report.json), never models.
"""
import json
import math
from pathlib import Path
from typing import Callable

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from util import UserError, atomic_write, md_table, write_json  # noqa: E402

KINDS = ("progressive", "independent")  # the two ways a family is trained (model.FAMILIES: its sizes)


# ---------------------------------------------------------------------------------------------
# Summary over seeds and the verdict. A single report is one seed; --combine pools the reports of
# several seeds of one family and plan. Everything the report shows is built from this summary.

def family_flops(rows: list[dict]) -> dict:
    """(family, name) -> (FLOPs of this member's own training, FLOPs of its family up to and
    including it). A progressive member's flops_total already counts its ancestors' stages; an
    independent member's counts itself only. Rows are smallest to largest within a family."""
    out = {}
    for family in KINDS:
        previous = total = 0.0
        for r in (r for r in rows if r["family"] == family):
            f = r["flops_total"]
            if f is None:
                out[(family, r["name"])] = (None, None)
                continue
            own = f - previous if family == "progressive" else f
            total = f if family == "progressive" else total + f
            out[(family, r["name"])], previous = (own, total), f
    return out


def spread(values) -> dict | None:
    """Mean and sample standard deviation (n - 1) over seeds; std None for one seed."""
    v = [float(x) for x in values if x is not None]
    if not v:
        return None
    return {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1 else None, "values": v}


def pooled_stderr(stderrs: list) -> float | None:
    """Standard error of the mean of independent estimates: sqrt(sum se_i^2) / n."""
    if not stderrs or any(s is None for s in stderrs):
        return None
    return math.sqrt(sum(s * s for s in stderrs)) / len(stderrs)


def mean_chance(chance: dict) -> float:
    """Chance level of the accuracy averaged over the tasks."""
    return float(np.mean(list(chance.values())))


def chance_stderr(chance: float, n: int) -> float:
    """Standard error of the accuracy of guessing on n items (binomial): the noise around chance."""
    return math.sqrt(chance * (1 - chance) / n)


def versus_chance(acc: float, chance: float, stderr: float) -> str:
    """"above", "within" or "below": where acc lies against chance ± 2 standard errors of guessing.
    Within is noise; below is a bias of the scoring (acc's summed log-likelihood favours short
    choices), not knowledge either."""
    if acc - chance > 2 * stderr:
        return "above"
    return "below" if chance - acc > 2 * stderr else "within"


def member_summary(rows: list[dict], chance: dict, flops: list[tuple]) -> dict:
    """One member of one family over seeds: `rows` are its report rows, one per seed."""
    tasks = {}
    for t in (t for t in rows[0]["tasks"] if t in chance):  # reports before chance levels: none
        ms = [r["tasks"][t] for r in rows]
        acc = spread(m["acc"] for m in ms)
        if acc is None:  # no item of the task fits the model's context (see task_metrics)
            continue
        noise = chance_stderr(chance[t], sum(m["n"] for m in ms))
        tasks[t] = {"acc": acc, "acc_norm": spread(m.get("acc_norm") for m in ms),
                    "stderr": pooled_stderr([m["acc_stderr"] for m in ms]), "ppl": spread(m.get("ppl") for m in ms),
                    "chance_stderr": noise, "vs_chance": versus_chance(acc["mean"], chance[t], noise)}
    out = {"params": rows[0]["params"], "loss": spread(r.get("ppl", {}).get("loss") for r in rows),
           "ppl": spread(r.get("ppl", {}).get("ppl") for r in rows),
           "bpb": spread(r.get("ppl", {}).get("bpb") for r in rows),
           "wikitext_ppl": spread(r.get("wikitext", {}).get("ppl") for r in rows),
           "tasks": tasks, "average": spread(r["average"] for r in rows),
           "flops_total": spread(r["flops_total"] for r in rows),  # the model's, ancestors' stages included
           "flops_own": spread(f[0] for f in flops), "flops_family": spread(f[1] for f in flops),
           "flops_planned": rows[0].get("flops_planned")}
    if tasks:  # the mean over tasks: its standard errors pool those of the tasks
        out["average_stderr"] = pooled_stderr([t["stderr"] for t in tasks.values()])
        out["average_chance_stderr"] = pooled_stderr([t["chance_stderr"] for t in tasks.values()])
        out["average_vs_chance"] = versus_chance(out["average"]["mean"], mean_chance(chance),
                                                 out["average_chance_stderr"])
    return out


def pair_summary(pairs: list[dict]) -> dict:
    out = {}
    if all("kl" in p for p in pairs):
        out.update({k: spread(p["kl"][k] for p in pairs) for k in ("kl_large_small", "kl_small_large")})
    if all("spec" in p for p in pairs):
        out.update({mode: spread(p["spec"][mode]["acceptance"] for p in pairs) for mode in ("sampling", "greedy")})
    return out


def summarize(reports: list[dict]) -> dict:
    """Each member and adjacent pair of both families over the seeds' reports, sizes from smallest
    to largest, the progressive − independent loss difference taken seed by seed."""
    chance = reports[0]["settings"].get("chance", {})
    rows, flops, pairs = {}, {}, {}
    for rep in reports:
        member_flops = family_flops(rep["members"])
        for r in rep["members"]:
            rows.setdefault(r["name"], {}).setdefault(r["family"], []).append(r)
            flops.setdefault((r["family"], r["name"]), []).append(member_flops[(r["family"], r["name"])])
        for p in rep["pairs"]:
            pairs.setdefault((p["small"], p["large"]), {}).setdefault(p["family"], []).append(p)
    members = []
    for name, fams in sorted(rows.items(), key=lambda kv: next(iter(kv[1].values()))[0]["params"]):
        m = {"name": name, **{f: member_summary(fams[f], chance, flops[(f, name)]) if f in fams else None
                              for f in KINDS}}
        m["params"] = next(iter(fams.values()))[0]["params"]
        if all(f in fams and "ppl" in fams[f][0] for f in KINDS):
            m["delta_loss"] = spread(p["ppl"]["loss"] - i["ppl"]["loss"]
                                     for p, i in zip(fams["progressive"], fams["independent"]))
        members.append(m)
    return {"seeds": len(reports), "train_seeds": [r["settings"].get("train_seed") for r in reports],
            "chance": chance, "members": members,
            "pairs": [{"small": s, "large": lg, **{f: pair_summary(fams[f]) if f in fams else None
                                                  for f in KINDS}} for (s, lg), fams in pairs.items()],
            "flops": {**{k: spread(r["flops"][k] for r in reports) for k in ("progressive", "independent", "saving")},
                      "planned": reports[0]["flops"]["planned"]}}


def each_member(summary: dict):
    """(family, member summary entry, that family's summary) of every evaluated member."""
    return [(f, m, m[f]) for f in KINDS for m in summary["members"] if m[f] is not None]


def seeds_text(summary: dict) -> str:
    seeds = [s for s in summary["train_seeds"] if s is not None]
    n = summary["seeds"]
    named = f" ({', '.join(map(str, seeds))})" if len(seeds) == n else ""
    if n == 1:
        return (f"1 seed{named}: no seed-to-seed spread is measured, so a difference smaller than that "
                "spread cannot be told from noise; run several seeds (run_family.sh SEEDS=\"1 2 3\", "
                "combined with evaluate.py --combine).")
    return f"{n} seeds{named}; ± is the standard deviation over seeds."


def flops_verdict(summary: dict) -> str:
    f = summary["flops"]
    sizes = {fam: [m["name"] for m in summary["members"] if m[fam]] for fam in KINDS}
    if sizes["independent"] and sizes["progressive"] != sizes["independent"]:
        return (f"FLOPs: no saving computed: the families have different members (progressive "
                f"{', '.join(sizes['progressive'])}; independent {', '.join(sizes['independent'])}).")
    if f["saving"] is None:
        return ("FLOPs: no saving computed (no independent family, or a checkpoint without "
                "flops_total).")
    planned = f" (planned {pct(f['planned']['saving'])} %)" if f["planned"] else ""
    return (f"FLOPs: the progressive family cost {f['progressive']['mean']:.3g} FLOPs, the independent "
            f"one {f['independent']['mean']:.3g}: the progressive family saved {pct(f['saving']['mean'])} %"
            f"{planned}.")


def loss_verdict(summary: dict) -> str:
    parts = []
    for m in summary["members"]:
        d = m.get("delta_loss")
        if d is None:
            continue
        if d["std"] is not None:
            wins = sum(v < 0 for v in d["values"])
            parts.append(f"{m['name']} {fmt_spread(d, '+.3f')} (progressive lower in {wins} of {len(d['values'])} "
                         "seeds)")
        else:
            better = "equal" if d["mean"] == 0 else "progressive better" if d["mean"] < 0 else "independent better"
            parts.append(f"{m['name']} {d['mean']:+.3f} ({better})")
    if not any(s["loss"] for _, _, s in each_member(summary)):
        return f"Validation loss: not evaluated (ppl is not in --tasks). {seeds_text(summary)}"
    if not parts:
        return f"Validation loss: no member has both a progressive and an independent result. {seeds_text(summary)}"
    return ("Validation loss, progressive − independent (nats/token; negative: progressive better): "
            + ", ".join(parts) + ". " + seeds_text(summary))


def zero_shot_verdict(summary: dict) -> str | None:
    chance = summary["chance"]
    members = [(f, m, s) for f, m, s in each_member(summary) if s["tasks"]]
    if not members or not chance:
        return None
    listed = "; ".join(f"{f} " + ", ".join(f"{m['name']} {pct(s['average']['mean'])}" for g, m, s in members
                                           if g == f) for f in KINDS if any(g == f for g, _, _ in members))
    text = (f"Zero-shot accuracy, mean over {len(chance)} tasks, in % (chance {pct(mean_chance(chance))}): "
            f"{listed}. ")
    where = {k: [f"{f} {m['name']}" for f, m, s in members if s["average_vs_chance"] == k]
             for k in ("above", "within", "below")}
    def who(v):  # names while they are few
        return "every member" if len(v) == len(members) else ", ".join(v) if len(v) <= 3 else f"{len(v)} members"
    groups = "; ".join(f"{k} it: {who(v)}" for k, v in (("within noise of", where["within"]),
                                                        ("below", where["below"])) if v)
    if where["above"]:
        text += f"Above chance by more than 2 standard errors: {', '.join(where['above'])}" + \
            (f" ({groups})." if groups else ".")
    else:
        text += (f"No member is above chance by more than 2 standard errors ({groups}): at this model size "
                 "and item count these accuracies rank nothing.")
    if where["below"]:
        text += (" Below chance is a bias of the scoring (acc's summed log-likelihood favours short "
                 "choices), not knowledge.")
    lambada = [s["tasks"]["lambada"] for _, _, s in members if "lambada" in s["tasks"]]
    if lambada and all(t["vs_chance"] != "above" for t in lambada):
        best_acc, best_ppl = max(t["acc"]["mean"] for t in lambada), min(t["ppl"]["mean"] for t in lambada)
        text += (f" LAMBADA (the last word, greedily; chance ~0): acc at most {pct(best_acc)} %; its perplexity "
                 f"({best_ppl:.3g} at best) is exp(−mean "
                 "log-likelihood of the whole word), huge until a model can complete words.")
    return text


def verdict_lines(summary: dict) -> list[str]:
    lines = [flops_verdict(summary), loss_verdict(summary), zero_shot_verdict(summary)]
    return [line for line in lines if line]


# ---------------------------------------------------------------------------------------------
# Report: report.json, report.md, plots

def fmt(x, spec: str = ".3f") -> str:
    return "–" if x is None else format(x, spec)


def pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def fmt_spread(s: dict | None, spec: str = ".3f", scale: float = 1.0) -> str:
    """The mean over seeds, and ± the standard deviation when there are several."""
    if s is None:
        return "–"
    text = format(scale * s["mean"], spec)
    return text if s["std"] is None else f"{text} ± {format(scale * s['std'], spec.lstrip('+'))}"


def mean_of(s: dict | None, spec: str = ".3f", scale: float = 1.0) -> str:
    return "–" if s is None else format(scale * s["mean"], spec)


def starred(text: str, vs_chance: str) -> str:
    """An accuracy marked * when it is not above chance (noise, or a bias of the scoring)."""
    return text + "*" * (vs_chance != "above")


def members_table(summary: dict) -> str:
    """One row per size, the two families side by side: what a reader compares."""
    def both(label, get):  # the column of each family: "label P", "label I"
        return [(f"{label} {f[0].upper()}", lambda m, f=f: get(m[f]) if m[f] is not None else "–") for f in KINDS]

    def acc(s):
        return starred(fmt_spread(s["average"], ".1f", 100), s["average_vs_chance"])

    cols = [("member", lambda m: m["name"]), ("params", lambda m: f"{m['params']:,}")]
    if any(s["loss"] for _, _, s in each_member(summary)):
        cols += both("val loss", lambda s: fmt_spread(s["loss"], ".4f"))
        cols.append(("Δ loss P − I", lambda m: fmt_spread(m.get("delta_loss"), "+.4f")))
    if summary["chance"]:
        cols += both("avg acc %", acc)
    cols += both("family FLOPs", lambda s: mean_of(s["flops_family"], ".3g"))
    legend = ("P = progressive (each member grown from the next smaller one), I = independent (each "
              "trained from scratch). "
              "val loss: nats per token on the same validation windows; Δ < 0: the progressive member is "
              "better. ")
    if summary["chance"]:
        legend += (f"avg acc: mean zero-shot accuracy over the tasks (chance {pct(mean_chance(summary['chance']))} %; "
                   "* not above it by more than 2 standard errors). ")
    legend += ("family FLOPs: training FLOPs of the family up to and including this member (progressive: "
               "its lineage of stages; independent: the sum of the members up to it), so the last row is "
               "each family's total.")
    return md_table([c[0] for c in cols], [[c[1](m) for c in cols] for m in summary["members"]]) + "\n\n" + legend


def details_table(summary: dict) -> str:
    """Perplexities and every task's accuracy (means over seeds) under a row of chance levels."""
    members = each_member(summary)
    order = {id(m): i for i, m in enumerate(summary["members"])}
    members.sort(key=lambda e: order[id(e[1])])  # same size side by side
    chance = summary["chance"]
    cols = [("family", lambda f, m, s: f, "chance"), ("member", lambda f, m, s: m["name"], "")]  # (name, get, chance)
    if any(s["ppl"] for _, _, s in members):
        cols += [("ppl", lambda f, m, s: mean_of(s["ppl"]), ""), ("bpb", lambda f, m, s: mean_of(s["bpb"], ".4f"), "")]
    if any(s["wikitext_ppl"] for _, _, s in members):
        cols.append(("WikiText ppl", lambda f, m, s: mean_of(s["wikitext_ppl"]), ""))
    for t in chance:
        norm = any(s["tasks"][t]["acc_norm"] for _, _, s in members)
        cols.append((f"{t} acc" + " / acc_norm" * norm, lambda f, m, s, t=t: " / ".join(
            starred(mean_of(s["tasks"][t][k], ".1f", 100), s["tasks"][t]["vs_chance"] if k == "acc" else "above")
            for k in ("acc", "acc_norm") if s["tasks"][t][k]), pct(chance[t])))
        if t == "lambada":
            cols.append(("lambada ppl", lambda f, m, s: mean_of(s["tasks"]["lambada"]["ppl"], ".3g"), ""))
    if chance:
        cols.append(("avg acc", lambda f, m, s: starred(mean_of(s["average"], ".1f", 100), s["average_vs_chance"]),
                     pct(mean_chance(chance))))
    rows = [[get(f, m, s) for _, get, _ in cols] for f, m, s in members]
    return md_table([c[0] for c in cols], ([[c[2] for c in cols]] if chance else []) + rows)


def pairs_table(summary: dict, columns: list[tuple[str, Callable]]) -> str:
    """One row per adjacent pair, each column once per family."""
    header = ["pair"] + [f"{f} {name}" for name, _ in columns for f in KINDS]
    rows = [[f"{p['small']} → {p['large']}"] + [get(p[f]) if p[f] else "–" for _, get in columns for f in KINDS]
            for p in summary["pairs"]]
    return md_table(header, rows)


def flops_table(summary: dict) -> str:
    """FLOPs per member, counted both ways, next to the plan when there is one."""
    planned = summary["flops"]["planned"]
    cols = [("family", lambda f, m, s: f), ("member", lambda f, m, s: m["name"]),
            ("own training", lambda f, m, s: mean_of(s["flops_own"], ".4g")),
            ("family up to it", lambda f, m, s: mean_of(s["flops_family"], ".4g"))]
    if planned:
        cols += [("planned family up to it", lambda f, m, s: fmt(s["flops_planned"], ".4g")),
                 ("spent / planned", lambda f, m, s: fmt(s["flops_family"]["mean"] / s["flops_planned"], ".3f")
                  if s["flops_family"] and s["flops_planned"] else "–")]
    table = md_table([c[0] for c in cols], [[get(f, m, s) for _, get in cols] for f, m, s in each_member(summary)])
    return (table + "\n\nown training: the FLOPs of this member's stage (progressive) or run (independent). "
            "family up to it: the sum over the family's members up to and including this one; a progressive "
            "member's checkpoint counts it as flops_total (its stage and every ancestor stage). "
            f"{flops_verdict(summary)}")


def growth_table(reports: list[dict]) -> str | None:
    """Copies of each grown member still twins of their source, per seed."""
    rows = [[f"{r['family']} {r['name']}" + (f" (report {i + 1})" if len(reports) > 1 else ""),
             str(sum(x["copies"] for x in r["twins"])), str(sum(x["twins"] for x in r["twins"]))]
            for i, rep in enumerate(reports) for r in rep["members"] if r.get("twins")]
    return md_table(["member", "copied units", "twins"], rows) if rows else None


def render_markdown(reports: list[dict], summary: dict, plots: list[str], notes: list[str]) -> str:
    s = reports[0]["settings"]
    parts = ["# Family evaluation", "## Verdict", "\n".join(verdict_lines(summary)),
             f"Tasks: {', '.join(s['tasks'])}. Zero-shot items per task: {s['limit'] or 'all'}. "
             f"Validation: {s['val_windows']} windows of {s['block_size']} tokens. "
             "Accuracies in %, scored as lm-evaluation-harness scores them.",
             "## Members", members_table(summary)]
    if summary["chance"] or any(m[f] and m[f]["ppl"] for m in summary["members"] for f in KINDS):
        parts += ["## Perplexity and zero-shot tasks",
                  "Means over the seeds (spreads in report.json). " * (summary["seeds"] > 1)
                  + "Chance: 1 / number of choices (LAMBADA: ~0). "
                  "* acc not above chance by more than 2 standard errors of guessing.", details_table(summary)]
    if any(p[f] and "kl_large_small" in p[f] for p in summary["pairs"] for f in KINDS):
        parts += ["## KL divergence between adjacent members (lower = more consistent)",
                  "KL(L‖S) = KL(p_larger ‖ p_smaller) = "
                  "E_{x~p_larger}[log p_larger(x) − log p_smaller(x)], "
                  "in nats, mean per token over the same validation tokens; KL(S‖L) is the reverse. "
                  "Lower: the two members predict more alike.",
                  pairs_table(summary, [("KL(L‖S)", lambda p: fmt_spread(p["kl_large_small"], ".4f")),
                                        ("KL(S‖L)", lambda p: fmt_spread(p["kl_small_large"], ".4f"))])]
    if any(p[f] and "greedy" in p[f] for p in summary["pairs"] for f in KINDS):
        parts += ["## Speculative decoding acceptance (higher = more consistent)",
                  f"The smaller member drafts k = {s['spec_k']} tokens, the larger verifies them. "
                  f"Acceptance = accepted / drafted tokens (%) over {s['spec_prompts']} prompts × "
                  f"{s['spec_tokens']} new tokens; sampling at temperature 1 with rejection "
                  "sampling, and greedy (accepted while the argmaxes agree).",
                  pairs_table(summary, [(mode, lambda p, m=mode: fmt_spread(p[m], ".1f", 100))
                                        for mode in ("sampling", "greedy")])]
    growth = growth_table(reports)
    if growth:
        parts += ["## Growth check",
                  "Copies of a unit (residual, head, FFN) that are still within 1e-6 of their source in "
                  "every weight are twins: they get the same updates forever and add no capacity "
                  "(`python expand.py --inspect CKPT` lists them per block).", growth]
    parts += ["## FLOPs", flops_table(summary)]
    parts += ["## Plots"] + [f"![{p}]({p})" for p in plots] if plots else []
    parts += ["## Notes", "\n".join(f"- {n}" for n in notes)] if notes else []
    return "\n\n".join(parts) + "\n"


FAMILY_STYLE = {"progressive": dict(color="tab:blue", marker="o"),
                "independent": dict(color="tab:orange", marker="s")}


def save_figure(fig, path: Path):
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120, bbox_inches="tight"))
    plt.close(fig)


def loss_plot_data(reports: list[dict], summary: dict) -> dict:
    """What the loss-vs-FLOPs plot draws, on a log FLOPs axis: the training curves (one per history
    file and seed; points at FLOPs <= 0, a first stage's step 0, cannot be placed and are left
    out), each member's evaluated loss (mean over seeds), the growth points, and a y-range from
    the evaluated losses up to the 90th percentile of the curves, so that the first steps' loss
    (ln 256 = 5.5 for bytes) does not squash the part where members differ."""
    curves = []
    for i, rep in enumerate(reports):
        seen = set()
        for r in rep["members"]:
            hist = sorted((h for h in r["history"] if h["flops_total"] > 0), key=lambda h: h["flops_total"])
            if hist and (r["family"], r["history_source"]) not in seen:
                seen.add((r["family"], r["history_source"]))
                curves.append({"family": r["family"], "label": r["name"] if i == 0 else None,
                               "x": [h["flops_total"] for h in hist], "y": [h["val_loss"] for h in hist]})
    points = [{"family": f, "name": m["name"], "x": s["flops_total"]["mean"], "y": s["loss"]["mean"],
               "yerr": s["loss"]["std"]} for f, m, s in each_member(summary)
              if s["flops_total"] and s["flops_total"]["mean"] > 0 and s["loss"]]
    growth = [p["x"] for p in points if p["family"] == "progressive"][:-1]
    curve_y = [y for c in curves for y in c["y"]]
    ys = curve_y + [p["y"] for p in points]
    ylim = None
    if ys:
        low = min(ys)
        # no curve: a member evaluated before its first evaluation in training (grown, or stopped early)
        high = max(([float(np.percentile(curve_y, 90))] if curve_y else []) + [p["y"] for p in points])
        pad = 0.05 * (high - low) or 0.05
        ylim = (low - pad, high + pad)
    return {"curves": curves, "points": points, "growth": growth, "ylim": ylim,
            "clipped": bool(curve_y) and max(curve_y) > ylim[1]}


def plot_loss_vs_flops(reports: list[dict], summary: dict, ax) -> bool:
    data = loss_plot_data(reports, summary)
    for family, style in FAMILY_STYLE.items():
        for i, c in enumerate(x for x in data["curves"] if x["family"] == family):
            ax.plot(c["x"], c["y"], color=style["color"], ls="-" if family == "progressive" else "--", lw=1.2,
                    alpha=1.0 if c["label"] else 0.35, label=f"{family} (training)" if i == 0 else None)
            if c["label"]:  # the member's name where its curve ends
                ax.annotate(c["label"], (c["x"][-1], c["y"][-1]), xytext=(3, 3 if family == "progressive" else -9),
                            textcoords="offset points", fontsize=7, color=style["color"])
        points = [p for p in data["points"] if p["family"] == family]
        if points:
            ax.errorbar([p["x"] for p in points], [p["y"] for p in points], [p["yerr"] or 0 for p in points],
                        ls="none", **style, zorder=3, label=f"{family} (evaluated)")
    for x in data["growth"]:
        ax.axvline(x, color="tab:blue", ls=":", lw=1)
    if data["ylim"]:
        ax.set_ylim(*data["ylim"])
    ax.set(xscale="log", xlabel="training FLOPs of the model (progressive: with its ancestors' stages)",
           ylabel="validation loss (nats/token)",
           title="Validation loss vs FLOPs (dotted: growth points"
           + "; first steps above the top" * data["clipped"] + ")")
    return bool(data["curves"] or data["points"])


def plot_kl(reports: list[dict], summary: dict, ax) -> bool:
    pairs = [p for p in summary["pairs"] if any(p[f] and "kl_large_small" in p[f] for f in KINDS)]
    width = 0.2
    for j, (family, key) in enumerate((f, k) for f in KINDS for k in ("kl_large_small", "kl_small_large")):
        sel = [(i, p[family][key]) for i, p in enumerate(pairs) if p[family] and key in p[family]]
        if sel:
            ax.bar([i + (j - 1.5) * width for i, _ in sel], [s["mean"] for _, s in sel], width,
                   yerr=[s["std"] or 0 for _, s in sel], color=FAMILY_STYLE[family]["color"],
                   alpha=1.0 if key == "kl_large_small" else 0.45,
                   label=f"{family} " + ("KL(L‖S)" if key == "kl_large_small" else "KL(S‖L)"))
    if pairs:
        ax.set_xticks(range(len(pairs)), [f"{p['small']}→{p['large']}" for p in pairs])
        ax.set_xlim(-0.5, len(pairs) - 0.5)
    ax.set(ylabel="mean KL per token (nats)",
           title="KL divergence between adjacent members (lower = more consistent)")
    return bool(pairs)


def plot_accuracy_vs_flops(reports: list[dict], summary: dict, ax) -> bool:
    drawn = False
    for family, style in FAMILY_STYLE.items():
        points = sorted((s["flops_total"]["mean"], 100 * s["average"]["mean"], 200 * (s["average_stderr"] or 0),
                         m["name"]) for f, m, s in each_member(summary)
                        if f == family and s["flops_total"] and s["flops_total"]["mean"] > 0 and s["average"])
        if points:
            x, y, err, names = zip(*points)
            ax.errorbar(x, y, err, **style, capsize=3, label=family)
            for xi, yi, name in zip(x, y, names):
                ax.annotate(name, (xi, yi), xytext=(4, 4), textcoords="offset points", fontsize=7,
                            color=style["color"])
            drawn = True
    if drawn:  # guessing lands inside the band 19 times in 20
        chance = 100 * mean_chance(summary["chance"])
        noise = 200 * max(s.get("average_chance_stderr") or 0 for _, _, s in each_member(summary))
        ax.axhline(chance, color="gray", ls="--", lw=1, label="chance (mean over the tasks)")
        ax.axhspan(chance - noise, chance + noise, color="gray", alpha=0.15, lw=0, label="chance ± 2 standard errors")
    ax.set(xscale="log", xlabel="training FLOPs of the model (progressive: with its ancestors' stages)",
           ylabel="mean zero-shot accuracy (%)", title="Mean zero-shot accuracy vs FLOPs (bars: 2 standard errors)")
    return drawn


PLOTS = {"loss_vs_flops.png": plot_loss_vs_flops, "kl_pairs.png": plot_kl,
         "accuracy_vs_flops.png": plot_accuracy_vs_flops}


def write_plots(out: Path, reports: list[dict], summary: dict, notes: list[str]) -> list[str]:
    written = []
    for name, plot in PLOTS.items():
        fig, ax = plt.subplots(figsize=(7, 4.5))
        if plot(reports, summary, ax):
            ax.legend(fontsize=8)
            save_figure(fig, out / name)
            written.append(name)
        else:
            plt.close(fig)
            notes.append(f"{name} not drawn: nothing to plot (no FLOPs, history, KL or accuracy)")
    return written


def write_report(out: Path, reports: list[dict], report: dict):
    """report.md, the plots and `report` as report.json; `reports` are the seeds it summarizes (for
    a single evaluation, [report] itself). Ends with where the report is and its verdict."""
    summary = summarize(reports)
    lines = verdict_lines(summary)
    plots = write_plots(out, reports, summary, report["notes"])
    report["verdict"] = " ".join(lines)
    write_json(out / "report.json", report)
    atomic_write(out / "report.md", lambda f: f.write(render_markdown(reports, summary, plots, report["notes"])),
                 mode="w")
    print(f"\nreport: {out / 'report.md'} (and report.json, {len(plots)} plots)")
    print("\n".join(lines))


# ---------------------------------------------------------------------------------------------
# Combining the reports of several seeds

SAME_RUN = {  # what the seeds of one family and plan share: (what, how to read it from a report)
    "members": lambda r: [f"{m['family']} {m['name']}" for m in r["members"]],
    "planned FLOPs": lambda r: r["flops"]["planned"],
    "tasks": lambda r: r["settings"]["tasks"],
    "zero-shot items per task": lambda r: r["settings"]["limit"],
    "validation windows": lambda r: (r["settings"]["val_windows"], r["settings"]["block_size"]),
}


def read_reports(paths: list[str]) -> list[dict]:
    """The per-seed report.json files of one run_family.sh run; one clear error for anything else."""
    reports = []
    for p in paths:
        if not Path(p).is_file():
            raise UserError(f"--combine {p} does not exist; give each seed's report.json "
                            "(runs/FAMILY/seed_*/report/report.json)")
        try:
            r = json.loads(Path(p).read_text())
        except json.JSONDecodeError as e:
            raise UserError(f"--combine {p} is not valid JSON ({e.msg}); evaluate that seed again") from e
        if not isinstance(r, dict) or "combined_from" in r or not {"members", "settings", "flops"} <= set(r):
            raise UserError(f"--combine {p} is not the report.json of one seed's evaluate.py run")
        reports.append(r)
    if len({Path(p).resolve() for p in paths}) < len(paths):
        raise UserError("--combine lists a report twice; give each seed's report.json once")
    for p, r in zip(paths[1:], reports[1:]):
        for what, get in SAME_RUN.items():
            if get(r) != get(reports[0]):
                raise UserError(f"--combine: {p} and {paths[0]} are not seeds of one family and plan: their "
                                f"{what} differ ({get(r)} vs {get(reports[0])})")
    return reports


def combine(paths: list[str], out: Path):
    reports = read_reports(paths)
    notes = [f"report {i + 1}: {p}" for i, p in enumerate(paths)]
    report = {"combined_from": [str(p) for p in paths], "settings": reports[0]["settings"],
              "summary": summarize(reports), "notes": notes}
    write_report(out, reports, report)
