"""experiments/consistency.py: KL and acceptance between members, at matched quality, with known answers."""
import importlib.util

import pytest
import torch

from conftest import ROOT
from model import GPT, get_config

spec = importlib.util.spec_from_file_location("consistency", ROOT / "experiments" / "consistency.py")
consistency = importlib.util.module_from_spec(spec)
spec.loader.exec_module(consistency)


def tiny_model(seed: int):
    torch.manual_seed(seed)
    return GPT(get_config("20k"), use_kernels=False).eval()


def args(**kw):
    return consistency.parse_args(["--spec_prompts", "2", "--spec_tokens", "8", *sum(([f"--{k}", str(v)]
                                                                                      for k, v in kw.items()), [])])


def test_a_member_against_itself_agrees_fully():
    """KL 0 both ways, no loss gap, and every drafted token accepted, greedy or sampled."""
    m = tiny_model(0)
    windows = torch.randint(0, 256, (4, m.cfg.block_size + 1))
    r = consistency.measure_pair(m, m, windows, args())
    assert r["kl_large_small"] == pytest.approx(0, abs=1e-6) and r["kl_small_large"] == pytest.approx(0, abs=1e-6)
    assert r["loss_small"] == pytest.approx(r["loss_large"]) and r["kl_minus_gap"] == pytest.approx(0, abs=1e-6)
    assert r["acceptance"] == {"greedy": 1.0, "sampling": 1.0}


def test_two_different_members_disagree():
    a, b = tiny_model(0), tiny_model(1)
    windows = torch.randint(0, 256, (4, a.cfg.block_size + 1))
    r = consistency.measure_pair(a, b, windows, args())
    assert r["kl_large_small"] > 1e-4 and r["kl_small_large"] > 1e-4
    assert r["kl_minus_gap"] == pytest.approx(r["kl_large_small"] - (r["loss_small"] - r["loss_large"]))
    assert 0 <= r["acceptance"]["greedy"] < 1


def test_matched_members_are_the_curve_points_closest_to_the_progressive_loss():
    def runs(losses):
        return {m: {"multiple": m, "val_loss": x} for m, x in losses.items()}
    seed_runs = {"progressive": {"a": runs({1.0: 3.0}), "b": runs({1.0: 2.0})},
                 "independent": {"a": runs({0.5: 3.5, 1.0: 3.0, 2.0: 2.5}), "b": runs({0.5: 2.4, 1.0: 2.2, 2.0: 1.9})}}
    chosen = consistency.chosen_members(seed_runs, ["a", "b"])
    assert chosen["independent"]["b"]["multiple"] == 1.0
    assert chosen["independent, matched"]["a"]["multiple"] == 1.0  # already equal
    assert chosen["independent, matched"]["b"]["multiple"] == 2.0  # 1.9 is the closest to 2.0


def test_tables_show_each_choice_per_pair_over_seeds():
    def row(seed, choice, kl):
        return {"seed": seed, "choice": choice, "small": "a", "large": "b", "multiple_small": 1.0,
                "multiple_large": 1.5, "kl_large_small": kl, "kl_small_large": kl, "loss_small": 3.0,
                "loss_large": 2.5, "kl_minus_gap": kl - 0.5, "acceptance": {"greedy": 0.5, "sampling": 0.25}}
    data = {"seeds": [1, 2], "val_tokens": 1024, "spec": {"k": 4, "prompts": 2, "tokens": 8},
            "rows": [row(s, c, kl + (s - 1) * 0.2) for s in (1, 2) for c, kl in zip(consistency.CHOICES, (0.6, 0.7, 0.8))]}
    text = consistency.tables(data)
    assert "| a → b | 0.700 ± 0.100 | 0.800 ± 0.100 | 0.900 ± 0.100 |" in text  # KL(L||S): mean ± half range
    assert "| a → b | 0.200 ± 0.100 | 0.300 ± 0.100 | 0.400 ± 0.100 |" in text  # KL - gap
    assert "1×/1.5×" in text
    assert "| a → b | -0.200, -0.200 | +0.000, +0.000 | +0.000, +0.000 |" in text  # progressive - matched, per seed
