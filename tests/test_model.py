import math
import time

import pytest
import torch

from model import FAMILIES, GPT, PRESETS, GPTConfig, count_params, get_config
from util import UserError


def built_counts(model):
    total = sum(p.numel() for p in model.parameters())
    emb = model.wte.weight.numel() + model.wpe.weight.numel()
    return total, total - emb


@pytest.mark.fast
@pytest.mark.parametrize("size", list(PRESETS))
def test_param_count_formula_matches_module(size):
    cfg = PRESETS[size]
    t0 = time.time()
    with torch.device("meta"):
        model = GPT(cfg)
    assert time.time() - t0 < 5, "building on the meta device must not allocate or initialize"
    total, non_emb = built_counts(model)
    n = count_params(cfg)
    assert (n["total"], n["non_embedding"]) == (total, non_emb)
    matmul = sum(p.numel() for name, p in model.named_parameters()
                 if p.dim() == 2 and not name.startswith(("wte", "wpe")))
    assert n["matmul"] == matmul


def test_paper_family_sizes():
    totals = [count_params(PRESETS[s])["total"] for s in FAMILIES["paper"]]
    for t, nominal in zip(totals, [1e9, 2e9, 4e9, 8e9]):
        assert abs(t / nominal - 1) <= 0.10
    cfgs = [PRESETS[s] for s in FAMILIES["paper"]]
    assert all(c.vocab_size == 50304 and c.block_size == 1024 and c.tokenizer == "gpt2" for c in cfgs)
    assert len({c.head_dim for c in cfgs}) == 1


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_grows_about_2x_in_width_and_depth(family):
    cfgs = [PRESETS[s] for s in FAMILIES[family]]
    totals = [count_params(c)["total"] for c in cfgs]
    ratios = [b / a for a, b in zip(totals, totals[1:])]
    assert all(1.6 <= r <= 2.8 for r in ratios), ratios
    assert all(b.n_layer >= a.n_layer and b.n_embd > a.n_embd and b.d_ff > a.d_ff
               for a, b in zip(cfgs, cfgs[1:]))
    assert cfgs[-1].n_layer > cfgs[0].n_layer
    assert len({c.head_dim for c in cfgs}) == 1 and len({c.vocab_size for c in cfgs}) == 1


def test_tiny_family_is_byte_level():
    assert all(PRESETS[s].vocab_size == 256 and PRESETS[s].tokenizer == "bytes" for s in FAMILIES["tiny"])


@pytest.mark.fast
def test_forward_shapes_and_initial_loss():
    torch.manual_seed(0)
    cfg = PRESETS["50k"]
    model = GPT(cfg)
    x = torch.randint(0, cfg.vocab_size, (4, 64))
    logits, loss = model(x, x)
    assert logits.shape == (4, 64, cfg.vocab_size)
    assert abs(loss.item() - math.log(cfg.vocab_size)) < 0.05  # near-uniform predictions at init
    logits2, none = model(x)
    assert none is None and torch.equal(logits, logits2)


@pytest.mark.fast
def test_causality():
    torch.manual_seed(0)
    model = GPT(PRESETS["20k"])
    x = torch.randint(0, 256, (1, 32))
    y = x.clone()
    y[0, 20:] = (y[0, 20:] + 1) % 256
    a, _ = model(x)
    b, _ = model(y)
    assert torch.allclose(a[0, :20], b[0, :20]) and not torch.allclose(a[0, 20:], b[0, 20:])


def test_context_overflow_is_refused():
    model = GPT(GPTConfig(1, 1, 16, 64, 256, 8, "bytes"))
    with pytest.raises(ValueError, match="exceeds"):
        model(torch.zeros(1, 9, dtype=torch.long))


def test_unknown_size():
    with pytest.raises(UserError, match="unknown size"):
        get_config("3b")
