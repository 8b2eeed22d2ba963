"""experiments/equal_loss.py: the saving at equal loss, on curves with known answers."""
import importlib.util
import json
import math

import pytest

from conftest import ROOT

spec = importlib.util.spec_from_file_location("equal_loss", ROOT / "experiments" / "equal_loss.py")
equal_loss = importlib.util.module_from_spec(spec)
spec.loader.exec_module(equal_loss)


def power_law(c: float, scale: float = 1.0) -> float:
    """A loss curve L(C) = 10 * (scale * C)^-0.5: a family that is `scale` times as efficient."""
    return 10 * (scale * c) ** -0.5


def runs(cost_1x: float, scale: float = 1.0, lineage: float = 0.0) -> dict:
    """{multiple: run}: a stage of cost_1x at 1x, on top of `lineage` FLOPs of ancestors."""
    return {m: {"flops_total": lineage + m * cost_1x, "val_loss": power_law(lineage + m * cost_1x, scale)}
            for m in equal_loss.MULTIPLES}


def test_crossing_interpolates_in_log_flops_and_bounds_outside():
    pts = [(1.0, 3.0), (4.0, 2.0), (16.0, 1.0)]
    assert equal_loss.crossing(pts, 2.5) == ("=", pytest.approx(2.0))  # halfway in log: sqrt(1 * 4)
    assert equal_loss.crossing(pts, 2.0) == ("=", pytest.approx(4.0))
    assert equal_loss.crossing(pts, 3.5) == ("<=", 1.0)  # already there at the smallest budget
    assert equal_loss.crossing(pts, 0.5) == (">", 16.0)  # never within the budgets run
    # a curve that goes up again: the first crossing counts
    assert equal_loss.crossing([(1, 3.0), (2, 1.0), (4, 2.5)], 2.0)[1] == pytest.approx(2 ** 0.5)


def test_member_savings_known_answer():
    """A progressive member 1.6x as efficient as the independent one (L_p(C) = L_i(1.6 C)): (a) it
    reaches the independent loss at 1/1.6 of the compute (saving 37.5%); (b) the independent member
    needs 1.6x the progressive compute (saving 37.5% again)."""
    prog, ind = runs(100.0, scale=1.6), runs(100.0)
    # the points are power laws, and the interpolation is linear in log C but not in log L:
    # the two budgets around the crossing bracket it; the answer is within their gap's curvature
    s = equal_loss.member_savings(prog, ind)
    assert s["a"][0] == "=" and s["a"][1] == pytest.approx(0.375, abs=0.01)
    assert s["b"][0] == "=" and s["b"][1] == pytest.approx(0.375, abs=0.01)
    # on exactly linear-in-log-C curves the answer is exact
    lin = lambda c, k: {m: {"flops_total": m * c, "val_loss": 5 - math.log(m * c * k)} for m in equal_loss.MULTIPLES}  # noqa: E731
    s = equal_loss.member_savings(lin(100.0, 1.6), lin(100.0, 1.0))
    assert s["a"] == ("=", pytest.approx(0.375)) and s["b"] == ("=", pytest.approx(0.375))
    # a useless growth: the same curve, shifted by the lineage's cost, saves nothing at equal loss
    s = equal_loss.member_savings(lin(100.0, 1.0), lin(100.0, 1.0))
    assert s["a"][1] == pytest.approx(0.0, abs=1e-12) and s["b"][1] == pytest.approx(0.0, abs=1e-12)


def test_savings_outside_the_budgets_are_bounds():
    lin = lambda c, k: {m: {"flops_total": m * c, "val_loss": 5 - math.log(m * c * k)} for m in equal_loss.MULTIPLES}  # noqa: E731
    s = equal_loss.member_savings(lin(100.0, 10.0), lin(100.0, 1.0))  # 10x as efficient: beyond 0.5..2x
    assert s["a"] == (">=", 0.5) and s["b"] == (">", pytest.approx(0.5))
    s = equal_loss.member_savings(lin(100.0, 0.1), lin(100.0, 1.0))  # 10x worse
    assert s["a"] == ("<", -1.0) and s["b"] == ("<=", pytest.approx(-1.0))


def test_family_saving_counts_every_member_and_the_lineage():
    """Two members; the progressive largest grows from the smallest (lineage cost 100) and is 1.25x as
    efficient. (b): independent training needs 100 (the smallest, the same run) + what the largest
    needs for the progressive loss; the progressive family costs its largest member's lineage."""
    lin = lambda c, k, base=0.0: {m: {"flops_total": base + m * c, "val_loss": 5 - math.log((base + m * c) * k)}  # noqa: E731
                                  for m in equal_loss.MULTIPLES}
    small = lin(100.0, 1.0)
    seed = {"progressive": {"s": small, "l": lin(300.0, 1.25, base=100.0)}, "independent": {"s": small, "l": lin(400.0, 1.0)}}
    f = equal_loss.family_savings(seed, ["s", "l"])
    # progressive largest at 1x: lineage 400 FLOPs at loss 5 - log(500): independent needs 500
    assert f["cost_progressive"] == 400.0 and f["independent_needs"] == pytest.approx(100.0 + 500.0)
    assert f["b"] == ("=", pytest.approx(1 - 400 / 600))
    # (a): the progressive largest reaches 5 - log(400) at lineage 320, against 100 + 400 independent
    assert f["a"] == ("=", pytest.approx(1 - 320 / 500)) and f["holds"]


def test_token_matched_interpolates_the_independent_curve():
    recipe = {"progressive": [{"size": "s", "steps": 10}, {"size": "l", "steps": 15}],
              "independent": [{"size": "s", "steps": 10}, {"size": "l", "steps": 20}]}
    ind = {m: {"val_loss": 3.0 - math.log(m)} for m in equal_loss.MULTIPLES}
    seed = {"independent": {"l": ind}, "progressive": {"l": {1.0: {"val_loss": 2.5}}}}
    t = equal_loss.token_matched(seed, recipe, "l")
    assert t["multiple"] == 1.25 and t["loss_independent"] == pytest.approx(3.0 - math.log(1.25))


def test_the_sweep_widens_until_the_best_lr_is_bracketed(monkeypatch, tmp_path):
    """A loss that is lowest at 8x the plan's LR: the first grid (0.5..4x) has its best at the edge,
    so the sweep adds 8x, then 16x (which is worse), stops, and tries the best LR decaying to 0."""
    import concurrent.futures as cf
    calls = []

    def fake_train(args, d, size, steps, warmup, lr, ratio, seed, batch, init="", **kw):
        calls.append((lr, ratio))
        return {"lr": lr, "min_lr_ratio": ratio, "ckpt": str(d), "val_loss": (math.log2(lr / 8e-3)) ** 2 + ratio}

    monkeypatch.setattr(equal_loss, "train", fake_train)
    args = equal_loss.parse_args(["sweep", "--out", str(tmp_path)])
    with cf.ThreadPoolExecutor(2) as pool:
        res = equal_loss.sweep_member(args, pool, "independent", {"size": "20k", "lr": 1e-3, "steps": 10,
                                                                    "warmup": 1, "batch": 16})
    lrs = sorted({round(lr / 1e-3, 6) for lr, _ in calls})
    assert lrs == [0.5, 1, 2, 4, 8, 16]
    assert res["best"]["lr"] == pytest.approx(8e-3) and res["best"]["min_lr_ratio"] == 0.0
    assert sum(r == 0.0 for _, r in calls) == 1  # decay to 0 only at the best LR


def test_recipe_of_the_tiny5_family_at_2x_chinchilla(tmp_path):
    """--family tiny5 --chinchilla 2: five stages per family, the 500k last."""
    args = equal_loss.parse_args(["collect", "--family", "tiny5", "--chinchilla", "2", "--data", str(tmp_path / "d"),
                                  "--out", str(tmp_path / "o")])
    r = equal_loss.recipe(args)
    for fam in ("progressive", "independent"):
        assert [s["size"] for s in r[fam]] == ["20k", "50k", "120k", "250k", "500k"]
    assert r["progressive"][-1]["steps"] < r["independent"][-1]["steps"]


def test_bad_input_is_one_line(tmp_path):
    from conftest import assert_user_error, run_script
    assert_user_error(run_script("experiments/equal_loss.py", "curves", "--data", tmp_path / "none"),
                      "data/prepare.py")
    data = tmp_path / "d"
    data.mkdir()
    (data / "meta.json").write_text("{}")
    assert_user_error(run_script("experiments/equal_loss.py", "curves", "--data", data, "--out", tmp_path / "o"),
                      "sweep")
    assert_user_error(run_script("experiments/equal_loss.py", "frontier", "--rewarmup", "1.5"), "0 <= F < 1")
    assert_user_error(run_script("experiments/equal_loss.py", "frontier", "--noise", "-0.1"), "the exact split")


def exact_curve(fam, size, c, k, base=0.0, seed=1):
    """A member's curve, loss linear in log compute (crossing() is exact on it): k x as efficient."""
    return [{"family": fam, "size": size, "seed": seed, "settings": "plan", "multiple": m,
             "flops_total": base + m * c, "val_loss": 5 - math.log((base + m * c) * k)} for m in equal_loss.MULTIPLES]


def two_member_results(k_large=1.25, seed=1):
    """A family s -> l: the grown l (300 FLOPs on a lineage of 100) k_large x as efficient as the
    independent l (400 FLOPs)."""
    return {"recipe": {"progressive": [{"size": "s", "steps": 10}, {"size": "l", "steps": 30}],
                       "independent": [{"size": "s", "steps": 10}, {"size": "l", "steps": 40}]},
            "family": "toy", "chinchilla": 1.0, "sweep": [],
            "curves": exact_curve("progressive", "s", 100.0, 1.0, seed=seed) + exact_curve("independent", "s", 100.0, 1.0, seed=seed)
            + exact_curve("progressive", "l", 300.0, k_large, base=100.0, seed=seed)
            + exact_curve("independent", "l", 400.0, 1.0, seed=seed)}


def test_tables_show_the_savings_and_the_tuned_baseline():
    """A two-member family on exact curves (see the family test above): the member row carries (a)
    36% and (b) 16.7%; the tuned-baseline row sets the progressive curve against the sweep's best."""
    results = {**two_member_results(),
               "sweep": [{"family": "independent", "size": "l",
                          "runs": [{"lr": 1e-3, "min_lr_ratio": 0.1, "val_loss": 5 - math.log(400)},
                                   {"lr": 2e-3, "min_lr_ratio": 0.1, "val_loss": 5 - math.log(440)}]},
                         {"family": "progressive", "size": "l",
                          "runs": [{"lr": 1e-3, "min_lr_ratio": 0.0, "val_loss": -1.3},
                                   {"lr": 2e-3, "min_lr_ratio": 0.1, "val_loss": -1.25}]}]}
    lines = equal_loss.tables(results).splitlines()
    row = lambda first: next(line for line in lines if line.startswith(first))  # noqa: E731
    # the member: (a) 1 - 320/400, (b) 1 - 400/500; the family: (a) 1 - 320/500, (b) 1 - 400/600
    assert row("| l |") == "| l | -1.215 | -0.991 | 20.0 | 20.0 | 20.0% | 20.0% | 1 |"
    assert row("| family |") == "| family |  |  | 36.0 | 33.3 | 36.0% | 33.3% | 1 |"
    # the sweep's best (loss 5 - log 440) is reached at lineage 352: 1 - 352/400
    # best against best: the progressive sweep's best, 0.001 decaying to 0, against the independent best
    assert row("| l | 2, ") == ("| l | 2, **not bracketed** | 0.002 | -1.087 | -0.991 | -1.215 | 12.0% | 0.001/0 | "
                                "-1.300 | -0.213 |")
    assert "0.001: -0.991, **0.002: -1.087**" in row("| independent | l |")


def test_trend_sets_every_setting_side_by_side(tmp_path):
    """Two settings on exact curves: at 1x Chinchilla the grown l is 1.25x as efficient ((a) 20%, as
    above); at 2x Chinchilla (two seeds) it is no more efficient than its independent counterpart, so
    it saves nothing at equal loss. Each row says its setting and its seeds, the 1x setting first."""
    one = two_member_results(1.25)
    two = two_member_results(1.0)
    two["curves"] += two_member_results(1.0, seed=2)["curves"]
    two["chinchilla"] = 2.0
    lines = equal_loss.trend([two, one]).splitlines()
    split = lines.index("Token-matched control, each setting's largest member:")
    rows = [line for line in lines[:split] if line.startswith("| toy")]
    assert rows[0] == "| toy, 20 tok/param | l | -1.215 | -0.991 | 20.0 | 20.0 | 20.0% | 20.0% | 1 |"
    assert rows[1].startswith("| toy, 20 tok/param | family |")
    assert rows[2].startswith("| toy, 40 tok/param | l | -0.991 ± 0.000 | -0.991 ± 0.000 | 0.0 ± 0.0 |")
    assert rows[2].endswith("| 1, 2 |") and len(rows) == 4
    # token-matched: the lineage (10 + 30 steps) saw as many tokens as the independent l (40)
    assert ("- toy, 20 tok/param: the progressive l's lineage saw 1.00× the tokens of its independent counterpart's "
            "budget. The independent l at that many tokens (its curve, interpolated): -0.991 against the "
            "progressive l's -1.215 (seed 1).") in lines
    assert next(line for line in lines if line.startswith("- toy, 40")).endswith("-0.991, -0.991 (seeds 1, 2).")
    # against longer independent runs: 20% wherever the grown curve reaches the loss (lineage 250..700)
    budget = [line for line in lines[split:] if line.startswith("| toy")]
    assert budget[0] == "| toy, 20 tok/param | l | ≥ -25.0% | ≥ 16.7% | 20.0 | 20.0 | 20.0 | 20.0 | 1 |"
    assert budget[1].startswith("| toy, 40 tok/param | l | ≥ -25.0%, ≥ -25.0% | 0.0 ± 0.0 |") and len(budget) == 2
    # a larger family sharing the member at the same tokens per parameter: only its family row is new
    larger = {**one, "family": "toy3"}
    rows = [line for line in equal_loss.trend([one, larger]).splitlines() if line.startswith("| toy")]
    assert [r.split(" | ")[:2] for r in rows] == [["| toy, 20 tok/param", "l"], ["| toy, 20 tok/param", "family"],
                                                  ["| toy3, 20 tok/param", "family"], ["| toy, 20 tok/param", "l"]]
    equal_loss.plot_trend([one, two], tmp_path / "trend.png")
    assert (tmp_path / "trend.png").stat().st_size > 10_000


def test_collect_reads_finished_runs_from_their_folders(tmp_path):
    """collect: a finished run's folder gives its result (a run still going gives none); the
    smallest member's curve serves both families; a seed-1 curve's 1x point at the plan's settings
    is that sweep point."""
    args = equal_loss.parse_args(["collect", "--out", str(tmp_path), "--results", str(tmp_path / "r.json")])
    rec = equal_loss.recipe(args)
    small, big = rec["independent"][0], rec["independent"][-1]

    def run(kind, fam, stage, lr, multiple, steps=None, loss=2.0):
        d = equal_loss.run_dir(tmp_path / kind, fam, stage["size"], 1, lr, 0.1, f"{multiple:g}x")
        d.mkdir(parents=True)
        steps = round(multiple * stage["steps"]) if steps is None else steps
        (d / "metrics.jsonl").write_text(json.dumps({"step": 0, "flops": 0, "flops_total": 0, "val_loss": 5.0}) + "\n"
                                         + json.dumps({"step": steps, "flops": 7.0, "flops_total": 9.0,
                                                       "val_loss": loss}) + "\n")
    run("curves", "independent", small, small["lr"], 1.0)
    run("curves", "independent", big, big["lr"], 1.0, loss=1.5)
    run("curves", "independent", big, big["lr"], 2.0, steps=3)  # still going: its last row is step 3
    run("sweep", "independent", big, big["lr"] / 2, 1.0, loss=1.7)
    # frontier variants: one with the largest member's run, one (another family's, whose earlier stages
    # are this family's) without it: only the first is this family's
    prog = rec["progressive"]
    run("frontier/scale1_below", "progressive", prog[-1], prog[-1]["lr"], 1.0)
    run("frontier/scale1_noise0.3", "progressive", prog[1], prog[1]["lr"], 1.0)
    equal_loss.collect(args)
    out = json.loads((tmp_path / "r.json").read_text())
    assert [(r["size"], r["knobs"]) for r in out["frontier"]] == [(prog[-1]["size"], {"aki_top": "below"})]
    assert sorted((c["family"], c["size"], c["multiple"]) for c in out["curves"]) == sorted(
        [("independent", small["size"], 1.0), ("progressive", small["size"], 1.0), ("independent", big["size"], 1.0)])
    sweep = next(s for s in out["sweep"] if s["size"] == big["size"])
    assert [(r["lr"], r["val_loss"]) for r in sweep["runs"]] == [
        (float(f"{big['lr'] / 2:.3g}"), 1.7), (float(f"{big['lr']:.3g}"), 1.5)]


def test_frontier_lineage_scales_every_grown_stage_and_grows_from_the_chosen_weights(monkeypatch, tmp_path):
    """frontier: each grown stage at budget_scale x its planned steps, grown from the previous
    stage's final checkpoint (the smallest member: the curves' run), or (stable) from the state
    train.py --stable_ckpt writes before the decay, which every stage but the last keeps; then the
    smallest member is trained too, so that its stable checkpoint counts its whole stage."""
    import concurrent.futures as cf
    calls = []

    def fake_train(args, d, size, steps, warmup, lr, ratio, seed, batch, init="", stable_ckpt="", **kw):
        calls.append({"size": size, "steps": steps, "init": init, "stable": stable_ckpt, "d": d})
        return {"size": size, "val_loss": 1.0}

    monkeypatch.setattr(equal_loss, "train", fake_train)
    monkeypatch.setattr(equal_loss, "grow", lambda args, src, size, seed, knobs=None: f"{src}->{size}")
    args = equal_loss.parse_args(["frontier", "--out", str(tmp_path)])
    plan, small = equal_loss.recipe(args), equal_loss.recipe(args, 0.6)
    first = equal_loss.run_dir(tmp_path / "curves", "independent", plan["independent"][0]["size"], 2,
                               plan["independent"][0]["lr"], 0.1, "1x") / "ckpt.pt"
    with pytest.raises(equal_loss.UserError, match="curves --settings plan --seeds 2"):
        equal_loss.lineage(args, None, 2, 0.6, "final")  # the smallest member's curve is missing
    first.parent.mkdir(parents=True)
    first.write_text("")
    with cf.ThreadPoolExecutor(1) as pool:
        for grow_from in ("final", "stable"):
            calls.clear()
            runs = equal_loss.lineage(args, pool, 2, 0.6, grow_from)
            stages = small["progressive"] if grow_from == "stable" else small["progressive"][1:]
            assert [(c["size"], c["steps"]) for c in calls] == [(st["size"], st["steps"]) for st in stages]
            assert all(c["steps"] < p["steps"] for c, p in zip(calls[-3:], plan["progressive"][1:]))
            assert [r["size"] for r in runs] == [st["size"] for st in small["progressive"][1:]]  # the grown ones
            assert {r["variant"] for r in runs} == {"scale0.6" if grow_from == "final" else "scale0.6_stable"}
            assert calls[0]["init"] == ("" if grow_from == "stable" else f"{first}->{calls[0]['size']}")
            for prev, c in zip(calls, calls[1:]):
                kept = prev["d"] / ("ckpt_stable.pt" if grow_from == "stable" else "ckpt.pt")
                assert c["init"] == f"{kept}->{c['size']}"
            assert [c["stable"] for c in calls] == [str(c["d"] / "ckpt_stable.pt") if grow_from == "stable" else ""
                                                    for c in calls[:-1]] + [""]


def test_frontier_knobs_reach_expand_and_the_grown_stages_warmup(monkeypatch, tmp_path):
    """--aki_top below, --noise and --rewarmup: every growth gets expand.py's flags (its output named
    after them, so variants never share a grown checkpoint), each grown stage warms up for the given
    fraction of its steps (the smallest member keeps its own), the variant's folder says the knobs,
    and collect reads them back from it."""
    import concurrent.futures as cf
    calls, expands = [], []

    def fake_train(args, d, size, steps, warmup, lr, ratio, seed, batch, init="", **kw):
        calls.append({"size": size, "steps": steps, "warmup": warmup, "init": init})
        return {"size": size, "val_loss": 1.0}

    def fake_run(cmd, cwd, check, stdout):
        expands.append(cmd)
    monkeypatch.setattr(equal_loss, "train", fake_train)
    monkeypatch.setattr(equal_loss.subprocess, "run", fake_run)
    args = equal_loss.parse_args(["frontier", "--out", str(tmp_path), "--aki_top", "below", "--noise", "0.3",
                                  "--rewarmup", "0.2"])
    plan = equal_loss.recipe(args)
    first = equal_loss.run_dir(tmp_path / "curves", "independent", plan["independent"][0]["size"], 1,
                               plan["independent"][0]["lr"], 0.1, "1x") / "ckpt.pt"
    first.parent.mkdir(parents=True)
    first.write_text("")
    with cf.ThreadPoolExecutor(1) as pool:
        runs = equal_loss.lineage(args, pool, 1, 1.0, "final")
    assert {r["variant"] for r in runs} == {"scale1_below_noise0.3_rewarmup0.2"}
    assert [c["warmup"] for c in calls] == [round(0.2 * st["steps"]) for st in plan["progressive"][1:]]
    assert all(cmd[cmd.index("--aki_top") + 1] == "below" and cmd[cmd.index("--noise") + 1] == "0.3" for cmd in expands)
    assert calls[0]["init"].endswith(f"ckpt_to_{calls[0]['size']}_below_noise0.3.pt")
    calls.clear()  # shrinking the last stage only: the stages before it are grown with the knobs too
    args.shrink = "last"
    with cf.ThreadPoolExecutor(1) as pool:
        runs = equal_loss.lineage(args, pool, 1, 0.7, "final", "last")
    assert [c["size"] for c in calls] == [st["size"] for st in plan["progressive"][1:]]
    assert [c["steps"] for c in calls[:-1]] == [st["steps"] for st in plan["progressive"][1:-1]]
    assert calls[-1]["steps"] < plan["progressive"][-1]["steps"]
    name = equal_loss.VARIANT.match("scale0.8_last_below_noise0.3_rewarmup0.2")
    assert (name["scale"], name["last"]) == ("0.8", "_last")
    assert equal_loss.parse_knobs(name["knobs"]) == {"aki_top": "below", "noise": 0.3, "rewarmup": 0.2}
    assert equal_loss.knobs_text({"aki_top": "below", "rewarmup": 0.15}) == \
        "AKI's top block from below, re-warmup 15% of steps"
    assert equal_loss.VARIANT.match("scale0.7_stable")["knobs"] == ""


def test_frontier_finds_the_smallest_budget_at_which_every_member_holds():
    """Three seeds; at 0.8x every grown member ends at or below its counterpart, at 0.6x the middle
    one ends above in one seed: the verdict is 0.8x, with the saving 1 - lineage / independent."""
    def run(fam, size, seed, loss, flops, **kw):
        return {"family": fam, "size": size, "seed": seed, "settings": "plan", "multiple": 1.0,
                "val_loss": loss, "flops_total": flops, **kw}
    curves, frontier = [], []
    for seed in (1, 2, 3):
        curves += [run("independent", z, seed, loss, c) for z, loss, c in (("s", 3.0, 10.0), ("m", 2.5, 30.0), ("l", 2.0, 60.0))]
        curves += [run("progressive", "s", seed, 3.0, 10.0), run("progressive", "m", seed, 2.4, 25.0),
                   run("progressive", "l", seed, 1.9, 60.0)]
        for scale, loss_m in ((0.8, 2.45), (0.6, 2.6 if seed == 2 else 2.5)):
            frontier += [run("progressive", "m", seed, loss_m, 20.0, budget_scale=scale, grow_from="final"),
                         run("progressive", "l", seed, 1.95, 60.0 * scale, budget_scale=scale, grow_from="final")]
        # a knob at the plan's budget: its own row, below the plan's
        frontier += [run("progressive", z, seed, loss, c, budget_scale=1.0, grow_from="final", knobs={"noise": 0.3})
                     for z, loss, c in (("m", 2.6, 25.0), ("l", 2.1, 60.0))]
    results = {"recipe": {"progressive": [{"size": z} for z in "sml"]}, "curves": curves, "frontier": frontier}
    rows, verdict = equal_loss.frontier_rows(results)
    assert [r[:3] for r in rows] == [["1", "none, the plan", "40.0"], ["1", "none; noise 0.3", "40.0"],
                                     ["0.8", "every grown stage", "52.0"], ["0.6", "every grown stage", "64.0"]]
    assert rows[1][3:] == ["0.100 ± 0.000 (0/3 ≤ 0)", "0.100 ± 0.000 (0/3 ≤ 0)", "0.200 ± 0.000", "no", "1, 2, 3"]
    del rows[1]
    assert rows[1][3:] == ["-0.050 ± 0.000 (3/3 ≤ 0)", "-0.050 ± 0.000 (3/3 ≤ 0)", "0.050 ± 0.000", "yes", "1, 2, 3"]
    assert rows[2][3] == "0.033 ± 0.050 (2/3 ≤ 0)" and rows[2][6] == "no"
    assert rows[0][5] == "0.000 ± 0.000"  # the plan against itself
    assert "0.8× the largest member alone (stages shortened: every grown stage), a 52.0% saving of FLOPs." in verdict


@pytest.mark.parametrize("status, output", [(-9, ""), (143, "stopped by signal 15"), (2, "error: --lr must be > 0")])
def test_a_stopped_run_stops_the_phase_but_a_diverged_one_is_a_result(monkeypatch, tmp_path, status, output):
    """A run killed or refused must not count as a bad LR (the sweep would move away from it); a
    run that diverged (train.py's non-finite loss error) is one, infinitely bad."""
    import subprocess

    def fake_run(message, code):
        def run(cmd, cwd, stdout, stderr):
            stdout.write(message)
            return subprocess.CompletedProcess(cmd, code)
        return run
    args = equal_loss.parse_args(["sweep", "--out", str(tmp_path)])
    d = tmp_path / "run"
    monkeypatch.setattr(equal_loss.subprocess, "run", fake_run(output, status))
    with pytest.raises(equal_loss.UserError, match=f"exit status {status} before its last step"):
        equal_loss.train(args, d, "20k", 10, 1, 1e-3, 0.1, 1, 16)
    monkeypatch.setattr(equal_loss.subprocess, "run", fake_run(
        "error: non-finite loss/gradient at step 3 (loss nan, grad norm nan)\n", 2))
    r = equal_loss.train(args, d, "20k", 10, 1, 1e-3, 0.1, 1, 16)
    assert not r["ok"] and r["val_loss"] == math.inf
    # the earlier divergence in the same log does not excuse a later stop
    monkeypatch.setattr(equal_loss.subprocess, "run", fake_run(output, status))
    with pytest.raises(equal_loss.UserError):
        equal_loss.train(args, d, "20k", 10, 1, 1e-3, 0.1, 1, 16)


def test_shrinking_only_the_last_stage_keeps_the_others_planned(monkeypatch, tmp_path):
    """--shrink last: the middle stages keep their planned steps (they are the curves' runs, reused),
    the last stage gets what is left of budget_scale x the family's budget; only it is trained."""
    import concurrent.futures as cf
    from flops import plan
    args = equal_loss.parse_args(["frontier", "--out", str(tmp_path), "--shrink", "last"])
    full, short = equal_loss.recipe(args), equal_loss.recipe(args, 0.7, "last")
    assert [st["steps"] for st in short["progressive"][:-1]] == [st["steps"] for st in full["progressive"][:-1]]
    flops = [st["flops"] for st in plan("tiny", 1, "adjusted")["progressive"]]
    last = 0.7 * sum(flops) - sum(flops[:-1])  # its FLOPs, in steps of the same tokens
    assert short["progressive"][-1]["steps"] == round(full["progressive"][-1]["steps"] * last / flops[-1])
    with pytest.raises(equal_loss.UserError, match="leaves nothing for the last stage"):
        equal_loss.recipe(args, 0.2, "last")
    calls = []
    monkeypatch.setattr(equal_loss, "train", lambda args, d, size, steps, warmup, lr, ratio, seed, batch, init="", **kw:
                        calls.append((size, steps, init)) or {"size": size})
    monkeypatch.setattr(equal_loss, "grow", lambda args, src, size, seed, knobs=None: f"{src}->{size}")
    prev = full["progressive"][-2]
    src = equal_loss.run_dir(tmp_path / "curves", "progressive", prev["size"], 1, prev["lr"], 0.1, "1x") / "ckpt.pt"
    src.parent.mkdir(parents=True)
    src.write_text("")
    with cf.ThreadPoolExecutor(1) as pool:
        runs = equal_loss.lineage(args, pool, 1, 0.7, "final", "last")
        with pytest.raises(equal_loss.UserError, match="--grow_from final"):
            equal_loss.lineage(args, pool, 1, 0.7, "stable", "last")
    assert calls == [(short["progressive"][-1]["size"], short["progressive"][-1]["steps"],
                      f"{src}->{short['progressive'][-1]['size']}")]
    assert runs[0]["variant"] == "scale0.7_last"


def test_a_last_stage_variant_is_judged_with_the_planned_members_before_it():
    def run(fam, size, seed, loss, flops, **kw):
        return {"family": fam, "size": size, "seed": seed, "settings": "plan", "multiple": 1.0,
                "val_loss": loss, "flops_total": flops, **kw}
    curves = [run(f, z, 1, loss, c) for f, z, loss, c in (
        ("independent", "s", 3.0, 10.0), ("independent", "m", 2.5, 30.0), ("independent", "l", 2.0, 60.0),
        ("progressive", "s", 3.0, 10.0), ("progressive", "m", 2.6, 25.0), ("progressive", "l", 1.9, 60.0))]
    frontier = [run("progressive", "l", 1, 1.99, 45.0, budget_scale=0.75, grow_from="final", shrink="last")]
    rows, _ = equal_loss.frontier_rows({"recipe": {"progressive": [{"size": z} for z in "sml"]},
                                        "curves": curves, "frontier": frontier})
    assert rows[1] == ["0.75", "the last stage", "55.0", "0.100 (0/1 ≤ 0)", "-0.010 (1/1 ≤ 0)", "0.090", "no", "1"]


def test_saving_by_budget_is_constant_for_a_constant_efficiency():
    """A progressive curve 1.6x as efficient saves 37.5% against the independent member at every
    budget whose loss it reaches within its own budgets; below them it is a bound."""
    def log_runs(k):  # loss linear in log compute, as crossing() interpolates: exact answers
        return {m: {"flops_total": 100.0 * m, "val_loss": 5 - math.log(100.0 * m * k)} for m in equal_loss.MULTIPLES}
    s = equal_loss.saving_by_budget(log_runs(1.6), log_runs(1.0))
    for m in (1.0, 1.25, 1.5, 2.0):
        assert s[m][0] == "=" and s[m][1] == pytest.approx(0.375)
    assert s[0.5] == (">=", pytest.approx(0.0)) and s[0.75] == (">=", pytest.approx(1 / 3))
