"""flops.py: the FLOPs formula against torch's counter, the family budget, LR schedule, memory, CLI."""
import json
import random

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import flops
from conftest import assert_user_error, run_script
from flops import FAMILY_LR, plan, progressive_flops, train_flops_per_token
from model import FAMILIES, GPT, PRESETS, GPTConfig, count_params, get_config
from parallel import (MAX_MICRO_BATCH, activation_bytes, activation_parts, checkpoint_activations, choose_layout,
                      choose_strategy, memory_plan)
from util import UserError


# --- FLOPs per token -------------------------------------------------------------------------

@pytest.mark.fast
@pytest.mark.parametrize("cfg, seq_len", [
    (get_config("20k"), 256),
    (get_config("250k"), 256),
    (get_config("500k"), 256),
    (GPTConfig(2, 4, 16, 256, 256, 1024, "bytes"), 1024),  # long context: attention dominates
    (GPTConfig(2, 2, 32, 256, 512, 512, "bytes"), 64),  # seq_len shorter than the context
    (get_config("llama-50k"), 256),  # RMSNorm, SwiGLU, RoPE, 2 query heads per key/value head
    # one key/value head for 4 queries, a tied head, biases, LayerNorm with SwiGLU
    (GPTConfig(2, 4, 16, 96, 256, 128, "bytes", 1e-5, "layernorm", "swiglu", "rope", 1e4, 1, True, True), 128),
])
def test_flops_per_token_matches_flop_counter(cfg, seq_len):
    torch.manual_seed(random.randrange(2**31))
    model = GPT(cfg, use_kernels=False)
    batch = 2
    idx = torch.randint(0, cfg.vocab_size, (batch, seq_len))
    # the math backend: FlopCounterMode does not count the CPU flash-attention kernel at all
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        _, loss = model(idx, idx)
        loss.backward()
    counted = counter.get_total_flops() / (batch * seq_len)
    # the bar is 5%; with the full T x T attention square the formula is exact
    assert train_flops_per_token(cfg, seq_len) == pytest.approx(counted, rel=1e-9)


# --- the family budget -----------------------------------------------------------------------

@pytest.mark.fast
def test_exact_doubling_gives_paper_ratios():
    """C and D exactly proportional to N (1:2:4:8): tokens D, 1.5D, 3D, 6D, f = 0.75, 1 - 64/85."""
    n0 = random.uniform(1e5, 1e10)
    params = [n0 * 2**k for k in range(4)]
    c = [6 * n for n in params]
    d = [20 * n for n in params]
    indep = [ci * di for ci, di in zip(c, d)]
    prog = progressive_flops(indep)
    tokens = [f / ci for f, ci in zip(prog, c)]
    assert [t / d[0] for t in tokens] == pytest.approx([1, 1.5, 3, 6], rel=1e-12)
    assert [p / i for p, i in zip(prog[1:], indep[1:])] == pytest.approx([0.75] * 3, rel=1e-12)
    assert sum(prog) == pytest.approx(indep[-1], rel=1e-12)
    assert 1 - sum(prog) / sum(indep) == pytest.approx(1 - 64 / 85, rel=1e-12)


@pytest.mark.fast
def test_paper_family_at_2x_chinchilla():
    """Stage tokens near 40/60/120/240B, within the bound the presets' non-exact ratios imply.

    Nominal: N_k = 2^(k-1) * 1e9 and independent FLOPs exactly 1:4:16:64, so f = 0.75 and tokens
    40e9 * (1, 1.5, 3, 6). Real: nu_k = N_k / nominal N_k, and x_k = F_k / (4^(k-1) F_1) lies in
    [lo, hi]. f = (64 x_4 - 1) / (4 x_2 + 16 x_3 + 64 x_4) rises with x_4 and falls with x_2, x_3,
    so f is in [(64 lo - 1) / (20 hi + 64 lo), (64 hi - 1) / (20 lo + 64 hi)]; stage k's tokens
    are f * 40 N_k = (f / 0.75) * nu_k * nominal_k (stage 1: nu_1 * 40e9).
    """
    sizes = FAMILIES["paper"]
    n = [count_params(get_config(s))["total"] for s in sizes]
    c = [train_flops_per_token(get_config(s)) for s in sizes]
    nu = [nk / (2**k * 1e9) for k, nk in enumerate(n)]
    x = [c[k] * n[k] / (4**k * c[0] * n[0]) for k in range(1, 4)]
    lo, hi = min(x), max(x)
    f_lo, f_hi = (64 * lo - 1) / (20 * hi + 64 * lo), (64 * hi - 1) / (20 * lo + 64 * hi)
    bound = max([abs(nu[0] - 1)] + [abs(nu[k] * f / 0.75 - 1) for k in (1, 2, 3) for f in (f_lo, f_hi)])
    assert bound < 0.05  # the presets are close to 2x steps: ~2.8%

    p = plan("paper", chinchilla=2)
    for stage, nominal in zip(p["progressive"], [40e9, 60e9, 120e9, 240e9]):
        assert abs(stage["tokens"] / nominal - 1) <= bound
    for stage in p["progressive"][1:]:
        assert f_lo <= stage["fraction"] <= f_hi
    assert 0.24 <= p["saving"] <= 0.26


@pytest.mark.fast
@pytest.mark.parametrize("family", list(FAMILIES))
def test_progressive_total_is_the_largest_alone(family):
    chinchilla = random.uniform(0.2, 3)
    p = plan(family, chinchilla=chinchilla, lr_schedule=random.choice(["fixed", "adjusted"]))
    members = FAMILIES[family]
    n = [count_params(get_config(s))["total"] for s in members]
    c = [train_flops_per_token(get_config(s)) for s in members]
    indep = [ci * 20 * chinchilla * ni for ci, ni in zip(c, n)]
    half_token = 0.5 * sum(c)  # tokens are rounded to whole tokens, at most half a token per stage
    assert p["budget_flops"] == pytest.approx(indep[-1], abs=half_token)
    assert p["progressive_flops"] == pytest.approx(indep[-1], abs=half_token)
    assert p["independent_flops"] == pytest.approx(sum(indep), abs=half_token)
    assert p["progressive"][0]["tokens"] == round(20 * chinchilla * n[0])
    f = (indep[-1] - indep[0]) / sum(indep[1:])
    for stage, ci, fi in zip(p["progressive"][1:], c[1:], indep[1:]):
        assert stage["flops"] == pytest.approx(f * fi, abs=0.5 * ci)
    assert p["progressive"][-1]["cumulative_flops"] == p["progressive_flops"]
    assert [s["size"] for s in p["independent"]] == members


def test_sub_chain_and_stage_fractions():
    # the 4x jump 50k -> 250k: both plans over those two members, same budget
    p = plan("tiny", members=["50k", "250k"])
    assert [s["size"] for s in p["progressive"]] == [s["size"] for s in p["independent"]] == ["50k", "250k"]
    half_token = 0.5 * sum(s["flops_per_token"] for s in p["progressive"])
    assert p["progressive_flops"] == pytest.approx(p["independent"][-1]["flops"], abs=half_token)
    assert p["progressive"][0]["tokens"] == p["independent"][0]["tokens"]

    rng = random.Random(0)  # seeded: the same test every run
    weights = [rng.uniform(0.1, 2) for _ in range(2)] + [0.1]
    base, split = plan("tiny"), plan("tiny", stage_fractions=weights)
    assert split["progressive_flops"] == pytest.approx(base["progressive_flops"], rel=1e-6)
    grown = [s["flops"] for s in split["progressive"][1:]]
    # tokens are whole numbers: each stage is within half a token's FLOPs of its share, so a share
    # of the sum is within 2 tokens' FLOPs of the sum
    tol = 2 * max(s["flops_per_token"] for s in split["progressive"]) / sum(grown)
    assert [g / sum(grown) for g in grown] == pytest.approx([w / sum(weights) for w in weights], abs=tol)


def test_lr_schedule_and_recipe():
    sizes = FAMILIES["paper"]
    adjusted = plan("paper", lr_schedule="adjusted")
    lrs = [s["lr"] for s in adjusted["progressive"]]
    assert lrs == pytest.approx([1.5e-3, 1.1e-3, 7e-4, 3e-4], rel=1e-12)
    assert (lrs[0], lrs[-1]) == FAMILY_LR["paper"]
    assert [s["lr"] for s in adjusted["independent"]] == lrs
    fixed = plan("paper", lr_schedule="fixed")
    assert {s["lr"] for s in fixed["progressive"] + fixed["independent"]} == {FAMILY_LR["paper"][0]}
    # a member keeps its family LR in a sub-chain
    sub = plan("paper", lr_schedule="adjusted", members=["2b", "8b"])
    assert [s["lr"] for s in sub["progressive"]] == [lrs[sizes.index("2b")], lrs[-1]]

    tiny = plan("tiny", lr_schedule="adjusted")
    assert (tiny["progressive"][0]["lr"], tiny["progressive"][-1]["lr"]) == pytest.approx(FAMILY_LR["tiny"])
    for s in tiny["progressive"]:
        assert s["min_lr"] == pytest.approx(s["lr"] / 10)
        assert s["warmup_tokens"] == round(flops.WARMUP_FRACTION * s["tokens"])
        assert (s["batch_size"], s["seq_len"]) == (16, 256)
    assert {s["seq_len"] * s["batch_size"] for s in adjusted["progressive"]} == {1024 * 1024}


def test_tiny5_extends_the_tiny_family():
    """tiny5 (tiny plus 500k): five stages that sum to the 500k alone; the shared members train with
    tiny's recipe, and tiny5's LR line, taken over its own five members, gives them tiny's LRs too."""
    tiny, tiny5 = plan("tiny", 1, "adjusted"), plan("tiny5", 1, "adjusted")
    assert [s["size"] for s in tiny5["progressive"]] == FAMILIES["tiny"] + ["500k"]
    half_token = 0.5 * sum(s["flops_per_token"] for s in tiny5["progressive"])
    assert tiny5["progressive_flops"] == pytest.approx(tiny5["independent"][-1]["flops"], abs=half_token)
    for a, b in zip(tiny["progressive"], tiny5["progressive"]):
        assert (b["lr"], b["min_lr"], b["batch_size"], b["seq_len"]) == \
            pytest.approx((a["lr"], a["min_lr"], a["batch_size"], a["seq_len"]), rel=1e-12)
    for size in FAMILIES["tiny"]:
        assert flops.member_lr(FAMILIES["tiny5"], "tiny5", size, "adjusted") == \
            pytest.approx(flops.member_lr(FAMILIES["tiny"], "tiny", size, "adjusted"), rel=1e-12)
    assert tiny5["progressive"][-1]["lr"] == pytest.approx(FAMILY_LR["tiny5"][1], rel=1e-12)
    assert tiny5["progressive"][-1]["lr"] < tiny["progressive"][-1]["lr"]


@pytest.mark.parametrize("kwargs", [
    dict(family="nope"), dict(family="tiny", chinchilla=0), dict(family="tiny", chinchilla=-1),
    dict(family="tiny", members=["1b", "2b"]), dict(family="tiny", members=["50k"]),
    dict(family="tiny", members=["250k", "50k"]), dict(family="tiny", stage_fractions=[1, 1]),
    dict(family="tiny", stage_fractions=[1, 0, 1]), dict(family="tiny", lr_schedule="cosine"),
    dict(family=["20k", "1b"]),
])
def test_bad_plan_input_is_a_user_error(kwargs):
    with pytest.raises(UserError):
        plan(**kwargs)


# --- memory ----------------------------------------------------------------------------------

def test_memory_strategy_paper_sizes():
    for size in FAMILIES["paper"]:
        m = memory_plan(get_config(size), nproc=8, micro_batch=8)
        n = count_params(get_config(size))["total"]
        assert m["ddp"]["state"] == 16 * n and m["fsdp"]["state"] == pytest.approx(16 * n / 8)
        assert m["ddp"]["working_set"] == 2 * n  # autocast's bf16 weight copies; buckets are views
    assert memory_plan(get_config("8b"), 8, 8)["ddp"]["state"] > 80e9  # 8b's replica alone: 129 GB
    # micro-batch 16 (the numbers): 2b no longer fits under DDP, 8b only with checkpointing
    chosen = [choose_strategy(get_config(s), 8, 16, gpu_mem_gb=80) for s in FAMILIES["paper"]]
    assert [(c["strategy"], c["checkpointing"]) for c in chosen] == \
        [("ddp", False), ("fsdp", False), ("fsdp", False), ("fsdp", True)]
    assert memory_plan(get_config("8b"), 8, 16)["fsdp"]["total"] > 0.9 * 80e9
    pinned = choose_strategy(get_config("8b"), 8, 16, gpu_mem_gb=80, checkpointing="off")
    assert not pinned["fits"] and pinned["strategy"] == "fsdp"
    assert choose_strategy(get_config("20k"), 1, 16)["strategy"] == "single"
    with pytest.raises(UserError):
        memory_plan(get_config("1b"), nproc=0, micro_batch=8)


@pytest.mark.parametrize("nproc", [4, 8, 16, 64])
def test_paper_layouts_fit_80gb(nproc):
    """micro x accumulation x nproc = 1024 for every member, each fits, and 1024/nproc per GPU at
    micro-batch <= 16 (the OOM of issue 16: 128 sequences per GPU in one micro-step). The planned
    total counts the cross-entropy backward's fp32 transient (issue 28)."""
    for size in FAMILIES["paper"]:
        r = choose_layout(get_config(size), nproc, 1024, gpu_mem_gb=80)
        assert r["micro_batch"] * r["grad_accum"] * nproc == 1024 and r["micro_batch"] <= MAX_MICRO_BATCH
        assert r["fits"] and r["bytes"] <= r["usable_bytes"] == 72e9
        row = memory_plan(get_config(size), nproc, r["micro_batch"], gpu_mem_gb=80,
                          checkpointing=r["checkpointing"])[r["strategy"]]
        assert row["total"] == r["bytes"]
        assert row["loss_backward"] == 8 * 1024 * r["micro_batch"] * get_config(size).vocab_size
        assert row["total"] == row["state"] + row["working_set"] + row["activations"] + row["loss_backward"]


def test_layout_small_gpus_checkpoint_or_refuse():
    small = [choose_layout(get_config(s), 8, 1024, gpu_mem_gb=24) for s in FAMILIES["paper"]]
    assert all(r["fits"] for r in small) and small[-1]["checkpointing"]
    assert not choose_layout(get_config("8b"), 8, 1024, gpu_mem_gb=4)["fits"]
    tiny = choose_layout(get_config("20k"), 1, 16)  # the CPU family: one micro-step of 16, as before
    assert (tiny["micro_batch"], tiny["grad_accum"], tiny["strategy"], tiny["checkpointing"]) == \
        (16, 1, "single", False)
    for nproc in (0, 3, 2048):
        with pytest.raises(UserError, match="divide"):
            choose_layout(get_config("1b"), nproc, 1024)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_activation_estimate_matches_saved_tensors(checkpointing):
    """activation_bytes against what autograd really keeps, for a bf16 model on the CPU flash path.
    With activation checkpointing a block keeps its input; the block recomputed during backward
    (activation_parts' "block") is the rest of the plan's peak."""
    torch.manual_seed(random.randrange(2**31))
    cfg, batch, seq_len = GPTConfig(2, 4, 32, 512, 512, 256, "bytes"), 2, 256
    model = GPT(cfg, use_kernels=False).to(torch.bfloat16)
    if checkpointing:
        checkpoint_activations(model)
    kept = saved_bytes(model, torch.randint(0, cfg.vocab_size, (batch, seq_len)))
    recompute = activation_parts(cfg, batch, seq_len)["block"] if checkpointing else 0
    assert kept == pytest.approx(activation_bytes(cfg, batch, seq_len, checkpointing) - recompute, rel=0.03)
    if checkpointing:  # per block, the input (2 bytes x s x b x h) instead of 32 bytes x s x b x h + lse
        assert kept < 0.4 * activation_bytes(cfg, batch, seq_len)


def test_autocast_plan_is_an_upper_bound():
    """DDP's autocast over fp32 weights: activations with an fp32 residual stream, plus the bf16 copy
    of each weight that autocast saves; the plan covers what autograd keeps, within 10%."""
    torch.manual_seed(random.randrange(2**31))
    cfg, batch, seq_len = GPTConfig(2, 4, 32, 512, 512, 256, "bytes"), 2, 256
    model = GPT(cfg, use_kernels=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        kept = saved_bytes(model, torch.randint(0, cfg.vocab_size, (batch, seq_len)))
    planned = activation_bytes(cfg, batch, seq_len, residual=4) + 2 * count_params(cfg)["total"]
    assert 0.9 * planned <= kept <= planned


def saved_bytes(model, idx) -> int:
    """Bytes of the storages autograd saves in a forward (parameters excluded) plus the logits."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits, _ = model(idx, idx)
    return sum(saved.values()) + logits.untyped_storage().nbytes()  # + the logits forward returns


# --- CLI -------------------------------------------------------------------------------------

def test_cli_table_and_json(tmp_path):
    out = tmp_path / "plan.json"
    r = run_script("flops.py", "--family", "tiny", "--chinchilla", "1", "--lr-schedule", "adjusted", "--json", str(out))
    assert r.returncode == 0, r.stderr
    assert "saving" in r.stdout and "progressive" in r.stdout
    assert json.loads(out.read_text()) == json.loads(json.dumps(plan("tiny", 1, "adjusted")))

    r = run_script("flops.py", "--memory", "--nproc", "8", "--family", "paper", "--gpu-mem", "80",
                   "--micro-batch", "16")
    assert r.returncode == 0, r.stderr
    assert [line.split()[-3:-1] for line in r.stdout.splitlines()[-4:]] == \
        [["ddp", "off"], ["fsdp", "off"], ["fsdp", "off"], ["fsdp", "on"]]

    r = run_script("flops.py", "--check", "--nproc", "8", "--family", "paper")
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.splitlines()) == 4 and "DOES NOT FIT" not in r.stdout
    r = run_script("flops.py", "--check", "--nproc", "8", "--family", "paper", "--gpu-mem", "4")
    assert_user_error(r, "8b", "do not fit")
    assert "8b: micro-batch 1 x accumulation 128" in r.stdout and "DOES NOT FIT" in r.stdout


@pytest.mark.parametrize("args, word", [(["--family", "huge"], "huge"), (["--chinchilla", "0"], "chinchilla"),
                                        (["--memory", "--nproc", "0"], "nproc"),
                                        (["--family", "tiny", "--members", "20k,7b"], "7b")])
def test_cli_bad_input(args, word):
    r = run_script("flops.py", *args)
    assert_user_error(r, word)
    assert r.stdout == ""


def test_presets_table_lists_every_preset():
    r = run_script("flops.py", "--presets")
    assert r.returncode == 0, r.stderr
    rows = {line.split()[1]: line.split() for line in r.stdout.splitlines()[2:]}
    in_family = list(dict.fromkeys(s for sizes in FAMILIES.values() for s in sizes))  # once: tiny5 repeats tiny
    assert len(r.stdout.splitlines()[2:]) == len(PRESETS)
    assert list(rows) == in_family + [s for s in PRESETS if s not in in_family]  # then those in no family
    assert int(rows["20k"][10].replace(",", "")) == count_params(get_config("20k"))["total"]
    assert rows["llama-8b"][5] == "8" and rows["smollm2-1.7b"][0] == "-"  # key/value heads; no family
