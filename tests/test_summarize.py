"""experiments/summarize.py: the tables of RESULTS.md, on known cases."""
import importlib.util
import json

from conftest import ROOT

spec = importlib.util.spec_from_file_location("summarize", ROOT / "experiments" / "summarize.py")
summarize = importlib.util.module_from_spec(spec)
spec.loader.exec_module(summarize)


def report(seed: int, family: str, losses: dict) -> dict:
    return {"seed": seed, "members": [{"family": family, "name": n, "ppl": {"loss": v}} for n, v in losses.items()]}


def test_per_seed_table_compares_the_same_seed():
    rep = {"main_adjusted": [report(1, "independent", {"a": 2.0, "b": 1.5}),
                             report(2, "independent", {"a": 2.2, "b": 1.3})],
           "recipe": [report(2, "progressive", {"a": 2.1, "b": 1.4}),  # seed 2 listed first
                      report(1, "progressive", {"a": 1.9, "b": 1.6})]}
    lines = summarize.per_seed_table(rep, "recipe").splitlines()
    assert lines[0] == "| member | seed 1: run vs independent | seed 2: run vs independent | lower in |"
    assert lines[2] == "| a | 1.900 (trained alone) | 2.100 (trained alone) | - |"  # the smallest: shown once
    assert lines[3] == "| b | 1.600 vs 1.500 (+0.100) | 1.400 vs 1.300 (+0.100) | 0 of 2 |"
    assert summarize.per_seed_table(rep, "recipe", smallest=False).splitlines()[2:] == lines[3:]


def test_load_reports_orders_seeds_numerically(tmp_path):
    for seed in (10, 2, 1):
        d = tmp_path / "run" / f"seed_{seed}" / "report"
        d.mkdir(parents=True)
        (d / "report.json").write_text(json.dumps({"members": [], "tag": seed}))
    reports = summarize.load_reports(tmp_path)["run"]
    assert [r["seed"] for r in reports] == [1, 2, 10] and [r["tag"] for r in reports] == [1, 2, 10]


def test_per_seed_table_against_another_runs_independent_members():
    """A recipe that changes the independent members too (a WSD schedule) is compared with its own."""
    rep = {"main_adjusted": [report(1, "independent", {"s": 3.0, "a": 9.0})],
           "wsd": [report(1, "progressive", {"s": 3.0, "a": 1.9}), report(1, "independent", {"s": 3.0, "a": 2.0})]}
    rep["wsd"][0]["members"] += rep["wsd"].pop()["members"]  # one report holds both families
    assert summarize.per_seed_table(rep, "wsd", "wsd").splitlines()[3] == "| a | 1.900 vs 2.000 (-0.100) | 1 of 1 |"
    assert summarize.per_seed_table(rep, "wsd").splitlines()[3] == "| a | 1.900 vs 9.000 (-7.100) | 1 of 1 |"
    assert summarize._has_independent(rep, "wsd") and not summarize._has_independent(rep, "missing")


def test_recipes_plot_draws_every_seed(tmp_path):
    rep = {"main_adjusted": [report(s, "progressive", {"a": 3.0, "b": 2.0 + s / 10}) for s in (1, 2)],
           "beyond_wsd": [report(1, "independent", {"a": 3.0, "b": 1.9})]}
    summarize.plot_recipes(rep, tmp_path / "recipes.png")
    assert (tmp_path / "recipes.png").stat().st_size > 10_000
    labels = [label for label, reports, _ in summarize.recipes(rep) if reports]
    assert labels == ["progressive, adjusted LR", "independent, adjusted LR", "progressive, WSD, adjusted LR",
                      "independent, WSD, adjusted LR"]


def test_lead_table_finds_the_lead_and_where_it_is_lost():
    def member(family, points):
        return {"family": family, "name": "big", "history": [{"flops_total": f, "val_loss": v} for f, v in points]}
    indep = member("independent", [(0, 5.0), (10, 3.0), (20, 1.0)])  # 3.0 at 10, 2.0 at 15, 1.0 at 20
    crossing = member("progressive", [(5, 2.0), (10, 2.5), (15, 2.1), (20, 1.5)])  # ahead by 2 at 25%
    ahead = member("progressive", [(10, 2.5), (20, 0.9)])
    rep = {"wsd": [{"seed": 1, "members": [crossing, indep]}, {"seed": 2, "members": [ahead, indep]}]}
    lines = summarize.lead_table(rep, "wsd", "big").splitlines()
    assert lines[2] == "| 1 | 2.000 (25%) | 75% |" and lines[3] == "| 2 | 0.500 (50%) | never |"


def test_twin_table_sets_the_equal_split_beside_the_noisy_split():
    def grown(name, loss, after, left):
        return {"family": "progressive", "name": name, "ppl": {"loss": loss}, "twins": [{"twins": left, "copies": 9}],
                "history": [{"flops_total": 1.0, "val_loss": after}, {"flops_total": 2.0, "val_loss": loss}]}
    small = {"family": "progressive", "name": "s", "ppl": {"loss": 3.0}}
    indep = [{"family": "independent", "name": n, "ppl": {"loss": v}} for n, v in (("s", 3.0), ("b", 2.5))]
    rep = {"main_adjusted": [{"seed": 1, "members": [small, grown("b", 2.0, 2.8, 0), *indep]},
                             {"seed": 2, "members": [small, grown("b", 2.2, 2.9, 1), *indep]}]}
    old = {"commit": "x", "after_growth_seed1": {"main_adjusted": {"b": [2.7, 2.4]}},
           "final": {"main_adjusted": {"progressive": {"b": [2.4, 2.6]}, "independent": {"b": [2.5, 2.5]}}}}
    lines = summarize.twin_table(rep, old).splitlines()
    assert lines[0] == ("| member | AKI, seed 1, after growth → final: equal split | noisy split | AKI, cosine, "
                        "adjusted LR, final: equal split | noisy split | twins left, noisy split |")
    assert lines[2] == "| b | 2.700 → 2.400 | 2.800 → 2.000 | 2.500 ± 0.100 | 2.100 ± 0.100 | 1 in 2 runs |"
    assert lines[-1].endswith("b 2.500 ± 0.000 beside the equal-split runs, 2.500 ± 0.000 beside the noisy-split ones.")


def test_results_md_has_one_section_to_replace():
    """summarize.py replaces the text between the first BEGIN and the next END: a marker quoted in
    RESULTS.md's prose would make it overwrite the prose instead."""
    text = (ROOT / "RESULTS.md").read_text()
    assert text.count(summarize.BEGIN) == 1 and text.count(summarize.END) == 1
    assert text.index(summarize.BEGIN) < text.index(summarize.END)
    assert "## What the tables show" in text[:text.index(summarize.BEGIN)]  # the hand-written prose stays


def test_results_md_regenerates_from_the_committed_results(tmp_path):
    """RESULTS.md's equal-loss, consistency and trend sections are what summarize.py makes of
    results/runs, byte for byte."""
    import shutil
    from conftest import run_script
    copy = tmp_path / "RESULTS.md"
    shutil.copy(ROOT / "RESULTS.md", copy)
    text = copy.read_text()
    for name in ("equal-loss", "consistency", "trend"):  # the sections made from results/runs
        start, end = text.index(f"<!-- {name}:begin -->"), text.index(f"<!-- {name}:end -->")
        text = text[:start] + f"<!-- {name}:begin -->\nstale\n" + text[end:]
    copy.write_text(text)
    proc = run_script("experiments/summarize.py", "--runs", ROOT / "results" / "runs", "--results", copy,
                      "--figures", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert copy.read_text() == (ROOT / "RESULTS.md").read_text()
    assert (tmp_path / "equal_loss.png").stat().st_size > 10_000
    assert (tmp_path / "equal_loss_trend.png").stat().st_size > 10_000
