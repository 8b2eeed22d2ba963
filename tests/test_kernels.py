"""
The Triton kernels of gpt_kernels.py, run on CPU through Triton's interpreter, against float64 PyTorch.

Every check draws fresh random inputs and fills every buffer the kernels write with NaN first
(kernels._empty), so an element a kernel leaves unwritten shows up as NaN, and NaN never passes.
Shapes are small (each interpreted program costs milliseconds) but cover widths that are not powers
of two and sequence lengths that are not multiples of the tiles (32 queries x 16 keys here).
"""
import copy
import math

import pytest
import torch

# Triton reads TRITON_INTERPRET when first imported: conftest.py switches the interpreter on before
# any test module is collected; skip if gpt_kernels.py came in without it anyway.
pytest.importorskip("triton", reason="triton is not installed (pip install triton==3.7.1)")
import gpt_kernels as kernels  # noqa: E402
from bench.common import (TOLERANCE, attention_errors, layer_norm_errors, poisoned_outputs, rel_err,  # noqa: E402
                          rms_norm_errors)
from model import GPT, GPTConfig  # noqa: E402

if not kernels._INTERPRETED:
    pytest.skip("gpt_kernels.py was imported before TRITON_INTERPRET=1 was set; run this file on its own",
                allow_module_level=True)


@pytest.fixture(autouse=True)
def poison():
    with poisoned_outputs():
        yield


def assert_within(errors: dict[str, float], dtype, what):
    bad = {k: e for k, e in errors.items() if not e < TOLERANCE[dtype]}  # NaN is never < tol
    assert not bad, (what, dtype, bad)


# ---------------------------------------------------------------------------------------------
# LayerNorm

@pytest.mark.parametrize("shape", [(7, 50), (2, 5, 96), (3, 64), (1, 9, 200)])
def test_layer_norm_float32_matches_float64(shape):
    assert_within(layer_norm_errors(shape, torch.float32), torch.float32, shape)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_layer_norm_16bit(dtype):
    assert_within(layer_norm_errors((6, 80), dtype), dtype, (6, 80))


def test_layer_norm_saves_mean_and_rstd():
    x = torch.randn(5, 37) * 2 - 1
    _, mean, rstd = kernels.layer_norm_fwd(x, torch.ones(37), torch.zeros(37), 1e-5)
    xd = x.double()
    assert rel_err(mean, xd.mean(-1)) < TOLERANCE[torch.float32]
    assert rel_err(rstd, 1 / torch.sqrt(xd.var(-1, unbiased=False) + 1e-5)) < TOLERANCE[torch.float32]


@pytest.mark.parametrize("shape", [(7, 50), (2, 5, 96)])
def test_rms_norm_float32_matches_float64(shape):
    assert_within(rms_norm_errors(shape, torch.float32), torch.float32, shape)


def test_rms_norm_16bit():
    assert_within(rms_norm_errors((6, 80), torch.bfloat16), torch.bfloat16, (6, 80))


# ---------------------------------------------------------------------------------------------
# Causal attention

@pytest.mark.parametrize("B,H,T,D,layout", [
    (1, 2, 70, 16, "qkv"),  # 3 query tiles, the last one partial; the model's strided layout
    (2, 1, 33, 32, "separate"),  # one row past a tile edge
    (1, 1, 64, 64, "separate"),  # whole tiles only
    (1, 1, 23, 128, "qkv"),  # the paper's head_dim, a single partial tile
])
def test_attention_float32_matches_float64(B, H, T, D, layout):
    assert_within(attention_errors(B, H, T, D, torch.float32, layout=layout), torch.float32, (B, H, T, D))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_attention_16bit(dtype):
    assert_within(attention_errors(1, 2, 45, 32, dtype), dtype, (1, 2, 45, 32))


def test_attention_single_token():
    """T = 1: the token attends to itself alone, so o = v, dv = do, and the softmax over a single
    score has no gradient: dq = dk = 0 (up to rounding of dP - delta)."""
    q, k, v, do = (torch.randn(2, 3, 1, 16) for _ in range(4))
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    o = kernels.causal_attention(q, k, v)
    o.backward(do)
    assert torch.equal(o, v)  # p = exp(0) = 1 exactly
    assert (v.grad - do).abs().max() < 1e-5  # p recomputed from the saved LSE: 1 up to rounding
    assert q.grad.abs().max() < 1e-5 and k.grad.abs().max() < 1e-5


def test_attention_saves_log_sum_exp():
    B, H, T, D = 1, 2, 40, 16
    q, k, v = (torch.randn(B, H, T, D) for _ in range(3))
    _, lse = kernels.attention_fwd(q, k, v)
    s = q.double() @ k.double().transpose(-1, -2) / math.sqrt(D)
    s = s.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    assert rel_err(lse, torch.logsumexp(s, dim=-1)) < TOLERANCE[torch.float32]


@pytest.mark.parametrize("D", [8, 24])
def test_attention_rejects_bad_head_dim(D):
    q = torch.randn(1, 1, 4, D)
    with pytest.raises(ValueError, match="power of two >= 16"):
        kernels.causal_attention(q, q, q)


# ---------------------------------------------------------------------------------------------
# The kernels inside the model

TINY = GPTConfig(n_layer=2, n_head=2, head_dim=16, d_ff=64, vocab_size=64, block_size=32, tokenizer="bytes")


def train_losses(models, steps=3, B=2, T=24) -> list[list[float]]:
    """A few SGD steps of each model on one random batch (T = 24: not a tile multiple).
    SGD, not Adam: Adam's first steps move every weight by ~lr whatever its gradient's size, so
    a gradient that is zero up to rounding would move by +-lr depending on the rounding."""
    x, y = torch.randint(TINY.vocab_size, (2, B, T))
    losses = []
    for model in models:
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        losses.append([])
        for _ in range(steps):
            _, loss = model(x, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses[-1].append(loss.item())
    return losses


def assert_same_training(ref: GPT, fused: GPT, losses):
    for a, b in zip(*losses):
        assert math.isfinite(b) and abs(b - a) < 1e-5 * a, losses
    for (name, p), q in zip(ref.named_parameters(), fused.parameters()):
        assert (p - q).abs().max() < 1e-5, name


# a Llama member: RMSNorm, and attention with each key/value head expanded to its group of query heads
TINY_LLAMA = GPTConfig(**{**TINY.to_dict(), "n_head": 4, "n_kv_head": 2, "norm": "rmsnorm", "mlp": "swiglu",
                          "pos": "rope", "bias": False})


@pytest.mark.parametrize("cfg, norm", [(TINY, "layer_norm"), (TINY_LLAMA, "rms_norm")], ids=["gpt2", "llama"])
def test_training_steps_match_pytorch_ops(monkeypatch, cfg, norm):
    ref = GPT(cfg, use_kernels=False)
    fused = copy.deepcopy(ref)
    fused.set_kernels(True, on_cpu=True)
    calls = {norm: 0, "causal_attention": 0}
    for name in calls:  # count the calls: the model really goes through the kernels
        def counted(*args, _f=getattr(kernels, name), _name=name):
            calls[_name] += 1
            return _f(*args)
        monkeypatch.setattr(kernels, name, counted)
    assert_same_training(ref, fused, train_losses([ref, fused]))
    assert calls == {norm: 3 * (2 * cfg.n_layer + 1), "causal_attention": 3 * cfg.n_layer}


@pytest.mark.slow
def test_compiled_model_treats_kernels_as_opaque():
    """torch.compile of the whole model with the kernels (custom ops): one graph, no break into
    Triton, and the same training as eager PyTorch ops (about a minute, mostly compilation)."""
    ref = GPT(TINY, use_kernels=False)
    fused = copy.deepcopy(ref)
    fused.set_kernels(True, on_cpu=True)
    compiled = torch.compile(fused, fullgraph=True)
    assert_same_training(ref, fused, train_losses([ref, compiled], steps=2))


# ---------------------------------------------------------------------------------------------
# bench/gpu.py, rehearsed on CPU

def test_gpu_benchmark_sections_run_on_cpu(monkeypatch, tmp_path):
    """bench/gpu.py's sections end to end at tiny shapes: kernels through the interpreter, wall-clock
    timers instead of CUDA events, a section that breaks in the middle. A lent GPU's few minutes
    must not be lost to a bug in the script around the kernels."""
    import json
    import time

    from bench import gpu
    from util import UserError

    def wall_ms(fn, inputs, dy):
        t0 = time.perf_counter()
        torch.autograd.grad(fn(*inputs), inputs, dy)
        return (time.perf_counter() - t0) * 1e3

    def broken():
        raise RuntimeError("injected")
    monkeypatch.setattr(gpu, "_fwd_bwd_ms", wall_ms)
    monkeypatch.setattr(gpu, "_copy_gbps", lambda device: 1.0)
    sections = [
        ("correctness", lambda: gpu.gpu_correctness("cpu", ln_shapes=((2, 3, 40),), attn_shapes=((1, 2, 40, 16),),
                                                      float32_attn_shapes=())),
        ("broken", broken),
        ("layer_norm", lambda: gpu.gpu_layer_norm_speed(rows=4, widths=(64,), device="cpu")),
        ("attention", lambda: gpu.gpu_attention_speed(batch=1, T=32, D=16, widths=(32,), device="cpu")),
        ("model", lambda: gpu.gpu_model_speed("20k", batch=1, steps=1, warmup=0, compiled=False,
                                                deadline=math.inf, device="cpu"))]
    with pytest.raises(UserError, match="sections broke"):
        gpu.run_sections(sections, str(tmp_path), math.inf)
    res = json.loads((tmp_path / "results_gpu.json").read_text())
    assert len(res["correctness"]) == 4 and all(r["ok"] for r in res["correctness"])
    assert res["skipped"] == ["broken failed: RuntimeError: injected"]  # and the sections after it ran:
    assert res["layer_norm"][0]["width"] == 64 and res["attention"][0]["heads"] == 2
    assert list(res["model"]["modes"]) == ["bf16+fused", "bf16+fused+kernels"]
    md = (tmp_path / "results_gpu.md").read_text()
    assert "Correctness: 4/4" in md and "| 4 x 64 |" in md and "| 1 2 32 16 |" in md and "bf16+fused+kernels" in md
