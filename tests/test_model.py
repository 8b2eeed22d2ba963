import math
import time

import pytest
import torch

from model import FAMILIES, GPT, PRESETS, GPTConfig, count_params, get_config
from util import UserError


def built_counts(model):
    total = sum(p.numel() for p in model.parameters())
    emb = model.wte.weight.numel() + (model.wpe.weight.numel() if model.cfg.pos == "learned" else 0)
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


def test_tiny5_is_tiny_plus_a_500k():
    """tiny5: the tiny family unchanged, then 500k, wider (64 -> 80) and deeper (4 -> 6 blocks) than 250k."""
    assert FAMILIES["tiny"] == ["20k", "50k", "120k", "250k"] and FAMILIES["tiny5"] == FAMILIES["tiny"] + ["500k"]
    cfg = PRESETS["500k"]
    assert (cfg.n_layer, cfg.n_embd, cfg.vocab_size, cfg.tokenizer) == (6, 80, 256, "bytes")
    assert count_params(cfg)["total"] == 528_640


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


def test_tiny_llama_matches_the_tiny_family():
    """The tiny-llama family: the tiny members' widths and depths, their parameter counts within
    10%, one group size and head_dim; the llama family is Llama 3's architecture."""
    for tiny, llama in zip(FAMILIES["tiny"], FAMILIES["tiny-llama"]):
        a, b = PRESETS[tiny], PRESETS[llama]
        assert (a.n_layer, a.n_embd, a.vocab_size, a.tokenizer) == (b.n_layer, b.n_embd, b.vocab_size, b.tokenizer)
        assert abs(count_params(b)["total"] / count_params(a)["total"] - 1) <= 0.10
    for family in ("tiny-llama", "llama", "smollm2"):
        cfgs = [PRESETS[s] for s in FAMILIES[family]]
        assert all((c.norm, c.mlp, c.pos, c.bias) == ("rmsnorm", "swiglu", "rope", False) for c in cfgs)
        assert len({c.group_size for c in cfgs}) == 1 and all(c.group_size > 1 for c in cfgs)
    llama = [PRESETS[s] for s in FAMILIES["llama"]]
    assert {c.head_dim for c in llama} == {128} and all(4 <= c.kv_heads <= 8 for c in llama)
    assert (llama[-1].n_layer, llama[-1].n_embd, llama[-1].d_ff, llama[-1].kv_heads) == (32, 4096, 14336, 8)


def test_config_of_an_older_checkpoint_loads_as_gpt2():
    """A checkpoint's config written before the architecture fields existed: the GPT-2 layout."""
    old = {k: v for k, v in PRESETS["50k"].to_dict().items()
           if k in ("n_layer", "n_head", "head_dim", "d_ff", "vocab_size", "block_size", "tokenizer", "norm_eps")}
    cfg = GPTConfig.from_dict(old)
    assert cfg == PRESETS["50k"] and (cfg.norm, cfg.mlp, cfg.pos, cfg.kv_heads, cfg.bias) == ("layernorm", "gelu", "learned", 2, True)
    assert [n for n, _ in GPT(cfg).named_parameters()][:3] == ["wte.weight", "wpe.weight", "blocks.0.ln1.weight"]
    assert {s for s, c in PRESETS.items() if c.rope_factor != 1.0} == {"llama3.2-1b", "llama3.2-3b-hd64"}


@pytest.mark.parametrize("bad, match", [({"norm": "batchnorm"}, "norm 'batchnorm'"), ({"n_kv_head": 3}, "does not divide"),
                                         ({"pos": "rope", "head_dim": 7}, "even head_dim"),
                                         ({"rope_factor": 8.0}, "RoPE scaling needs pos rope"),
                                         ({"pos": "rope", "rope_factor": 8.0, "rope_low_freq_factor": 4.0},
                                          "rope_low_freq_factor < rope_high_freq_factor")])
def test_invalid_architecture_is_refused(bad, match):
    with pytest.raises(UserError, match=match):
        GPTConfig(**{**PRESETS["50k"].to_dict(), **bad})


@pytest.mark.fast
def test_llama_member_layout():
    """GQA's qkv rows, SwiGLU's three Linears, no biases and no wpe; a tied head is wte itself;
    causal like any member."""
    cfg = PRESETS["llama-50k"]
    model = GPT(cfg, use_kernels=False)
    assert model.blocks[0].attn.qkv.weight.shape == ((4 + 2 * 2) * 8, 32)
    assert {n for n, _ in model.named_parameters() if n.startswith("blocks.0.")} == {
        f"blocks.0.{n}.weight" for n in ("ln1", "attn.qkv", "attn.proj", "ln2", "mlp.gate", "mlp.fc", "mlp.proj")}
    assert not hasattr(model, "wpe")
    x = torch.randint(0, 256, (1, 32))
    y = x.clone()
    y[0, 20:] = (y[0, 20:] + 1) % 256
    a, b = model(x)[0], model(y)[0]
    assert torch.allclose(a[0, :20], b[0, :20]) and not torch.allclose(a[0, 20:], b[0, 20:])
    tied = GPT(GPTConfig(**{**cfg.to_dict(), "tie_embeddings": True}))
    assert tied.head.weight is tied.wte.weight
    assert sum(p.numel() for p in tied.parameters()) == count_params(tied.cfg)["total"]
