"""The KV cache (model.py) and speculative sampling (sample.py): cached logits equal the full forward,
greedy speculation reproduces greedy decoding, and the sampler's output follows the target's
distribution, which the wrong acceptance rules demonstrably miss."""
import dataclasses
import importlib.util
import json

import numpy as np
import pytest
import torch

import checkpoint
import sample
from checkpoint import size_name
from conftest import ROOT
from model import GPT, GPTConfig, KVCache
from sample import CachedModel, generate, speculative_acceptance, speculative_generate, verify
from util import UserError


# a Llama member: RMSNorm, SwiGLU, RoPE, one key/value head for both query heads, no biases
LLAMA = {"norm": "rmsnorm", "mlp": "swiglu", "pos": "rope", "n_kv_head": 1, "bias": False}


def random_gpt(seed: int, n_layer=2, n_head=2, block_size=32, std=0.3, tokenizer="bytes", **arch) -> GPT:
    """Random weights, biases and gains included, so no tensor hides behind init's zeros and ones."""
    torch.manual_seed(seed)
    vocab = 256 if tokenizer == "bytes" else 50304
    model = GPT(GPTConfig(n_layer, n_head, 8, 32, vocab, block_size, tokenizer, **arch), use_kernels=False)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, std)
    return model.eval()


def total_variation(a, b) -> float:
    return 0.5 * float(np.abs(np.asarray(a) - np.asarray(b)).sum())


# ---------------------------------------------------------------------------------------------
# KV cache

@torch.no_grad()
@pytest.mark.parametrize("arch", [{}, LLAMA], ids=["gpt2", "llama"])
def test_cached_logits_equal_the_full_forward_step_by_step(arch):
    model = random_gpt(1, **arch)
    seq = torch.randint(0, 256, (2, 20))
    cache, steps = KVCache(), [5, 1, 3, 1, 1, 4, 2]  # token chunks fed one after the other
    t = 0
    for n in steps:
        logits, _ = model(seq[:, t:t + n], cache=cache)
        t += n
        full, _ = model(seq[:, :t])
        assert len(cache) == t
        torch.testing.assert_close(logits, full[:, -n:], atol=1e-5, rtol=0)


@torch.no_grad()
@pytest.mark.parametrize("arch", [{}, LLAMA], ids=["gpt2", "llama"])
def test_cache_crop_forgets_the_rejected_positions(arch):
    model = random_gpt(2, **arch)
    seq, other = torch.randint(0, 256, (1, 12)), torch.randint(0, 256, (1, 3))
    cache = KVCache()
    model(seq, cache=cache)
    cache.crop(9)  # the last 3 were rejected drafts
    logits, _ = model(other, cache=cache)
    full, _ = model(torch.cat([seq[:, :9], other], dim=1))
    torch.testing.assert_close(logits, full[:, -3:], atol=1e-5, rtol=0)


@torch.no_grad()
def test_cached_model_restarts_its_window_beyond_the_context():
    """A prompt longer than the context, then chunks fed and partly rejected as drafts: every
    position's logits are the full forward's on the window the position belongs to, which moves
    on by half a block (8 tokens) from the prompt's last 16."""
    model = random_gpt(3, block_size=16)
    seq = torch.randint(0, 256, (1, 20))
    lm = CachedModel(model, seq.size(1))
    assert [lm.window_start(t) for t in (19, 20, 27, 28, 35, 36)] == [4, 12, 12, 20, 20, 28]
    n, starts = 1, set()
    for chunk in [1, 3, 1, 5, 2, 1, 1, 4, 9, 3, 2, 1, 6]:
        logits = lm.logits(seq, n)
        for i, t in enumerate(range(seq.size(1) - n, seq.size(1))):
            s = lm.window_start(t)
            starts.add(s)
            full = model(seq[:, s:t + 1])[0][:, -1]
            torch.testing.assert_close(logits[:, i], full, atol=1e-5, rtol=0)
        if n > 2:  # the last two were rejected drafts
            lm.rewind(seq.size(1) - 2)
            seq = seq[:, :-2]
        seq, n = torch.cat([seq, torch.randint(0, 256, (1, chunk))], dim=1), chunk
    assert len(starts) >= 4


@torch.no_grad()
def test_cached_generation_equals_uncached_within_the_context():
    model = random_gpt(4, block_size=64)
    prompt = torch.randint(0, 256, (2, 5))
    gen = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    cached = torch.stack(list(generate(model, prompt, 30, 1.0, None, gen())), dim=1)
    idx, g = prompt, gen()
    for _ in range(30):  # the sampler without a cache: the whole sequence every step
        probs = sample.next_token_probs(model(idx)[0][:, -1].float(), 1.0, None)
        idx = torch.cat([idx, sample.draw(probs, g)[:, None]], dim=1)
    assert torch.equal(cached, idx[:, 5:])


# ---------------------------------------------------------------------------------------------
# Speculative decoding

def without_top_layer(target: GPT) -> GPT:
    """The target less its last block: a smaller draft that often, not always, agrees with it."""
    draft = GPT(dataclasses.replace(target.cfg, n_layer=target.cfg.n_layer - 1), use_kernels=False)
    draft.load_state_dict({k: v for k, v in target.state_dict().items() if k in draft.state_dict()})
    return draft.eval()


@pytest.mark.parametrize("k", [1, 3, 5])
def test_greedy_speculation_yields_the_greedy_tokens(k):
    """Drafts by a different, smaller random model (mostly rejected) and by the target less its top
    layer (some kept, some rejected), over 8 tokens; 60 tokens in a 32-token context also restart
    both windows."""
    target = random_gpt(10 + k, n_layer=3, std=0.6)
    prompt = torch.randint(0, 256, (1, 7))
    plain = torch.stack(list(generate(target, prompt, 60, temperature=0, n_vocab=8)), dim=1)[0]
    counts = []
    for draft in (random_gpt(20 + k, n_layer=1, n_head=1, std=0.6), without_top_layer(target)):
        rounds = list(speculative_generate(draft, target, prompt, 60, k, temperature=0, n_vocab=8))
        assert torch.equal(torch.cat([new for new, _, _ in rounds]), plain)
        counts.append((sum(r[1] for r in rounds), sum(r[2] for r in rounds)))
    (random_accepted, random_drafted), (accepted, drafted) = counts
    assert random_accepted < random_drafted and 0 < accepted < drafted


def test_a_model_drafting_for_itself_is_always_accepted():
    model = random_gpt(5)
    prompts = torch.randint(0, 256, (2, 6))
    for temperature in (0.0, 1.0):
        r = speculative_acceptance(model, model, prompts, 23, 4, temperature, seed=0)
        assert r["acceptance"] == 1.0 and r["rounds"] == 2 * 5  # 5 + 5 + 5 + 5 + 3 tokens per prompt


def accept_always(ps, qs, drafts, generator):
    """WRONG: keep every draft; the output then follows the draft's q."""
    return len(drafts), sample.draw(ps[-1], generator)


def resample_from_p(ps, qs, drafts, generator):
    """WRONG: on rejection draw from p instead of the residual max(0, p - q)."""
    for i, x in enumerate(drafts):
        if torch.rand((), generator=generator) >= ps[i, x] / qs[i, x]:
            return i, sample.draw(ps[i], generator)
    return len(drafts), sample.draw(ps[-1], generator)


P, Q = np.array([0.5, 0.3, 0.15, 0.05]), np.array([0.1, 0.2, 0.3, 0.4])


def first_token_frequencies(rule, k: int, n: int, seed: int) -> tuple[np.ndarray, float]:
    """Frequencies of the first token out of rule(ps, qs, drafts) for the constant target P and
    draft Q, and the fraction of drafts accepted."""
    generator = torch.Generator().manual_seed(seed)
    ps, qs = torch.tensor(P).expand(k + 1, 4), torch.tensor(Q).expand(k, 4)
    counts, accepted = np.zeros(4), 0
    for _ in range(n):
        drafts = sample.draw(qs, generator)
        i, nxt = rule(ps, qs, drafts, generator)
        counts[int(drafts[0]) if i > 0 else int(nxt)] += 1
        accepted += i
    return counts / n, accepted / (n * k)


def test_rejection_rule_on_known_distributions():
    """With constant p and q each draft is kept with probability a = sum min(p, q), so a round keeps
    a + a^2 + ... + a^k drafts on average; the first token follows p exactly. The two wrong rules
    give q and min(p, q) + (1 - a) p, both far from p, and the same test catches them."""
    n, k, a = 6000, 3, np.minimum(P, Q).sum()
    tolerance = 0.04  # the TV distance of 6000 samples from their 4-token law is ~0.01
    freq, acceptance = first_token_frequencies(verify, k, n, seed=1)
    assert acceptance == pytest.approx(sum(a ** i for i in range(1, k + 1)) / k, abs=0.02)
    assert total_variation(freq, P) < tolerance
    for wrong, law in ((accept_always, Q), (resample_from_p, np.minimum(P, Q) + (1 - a) * P)):
        freq, _ = first_token_frequencies(wrong, k, n, seed=1)
        assert total_variation(freq, law) < tolerance  # the wrong rule does what we think it does
        assert total_variation(freq, P) > 3 * tolerance


def target_and_draft():
    """Tiny random models over 4 tokens (n_vocab) whose distributions differ a lot: a wrong
    rejection rule then shows in the output."""
    target, draft = random_gpt(40, std=0.6), random_gpt(41, n_layer=1, n_head=1, std=0.6)
    return target, draft, torch.randint(0, 256, (1, 5))


def two_token_law(target, prompt, temperature, top_k) -> np.ndarray:
    """P(x1, x2 | prompt) of the target over 4 tokens, (4, 4), from the processed distributions."""
    probs = lambda idx: sample.next_token_probs(target(idx)[0][0, -1, :4].float(),  # noqa: E731
                                                temperature, top_k)
    with torch.no_grad():
        p1 = probs(prompt)
        p2 = torch.stack([probs(torch.cat([prompt, torch.tensor([[x]])], dim=1)) for x in range(4)])
    return (p1[:, None] * p2).numpy()


def two_token_frequencies(draft, target, prompt, temperature, top_k, n=1000) -> np.ndarray:
    """Frequencies of the first two tokens of n speculative samples, k = 2 drafts per round."""
    generator = torch.Generator().manual_seed(0)
    counts = np.zeros((4, 4))
    for _ in range(n):
        rounds = speculative_generate(draft, target, prompt, 2, 2, temperature, top_k, generator, n_vocab=4)
        x1, x2 = torch.cat([new for new, _, _ in rounds]).tolist()
        counts[x1, x2] += 1
    return counts / n


# TV distance. 1000 draws from these 16-outcome laws land 0.03-0.04 from them on average, and in
# 99.9% of simulated multinomial draws within 0.073.
TOLERANCE = 0.08


@pytest.mark.parametrize("temperature,top_k", [(1.0, None), (0.7, 3)])
def test_speculative_samples_follow_the_target(temperature, top_k):
    """End to end: the first two tokens of 1000 samples against the target's exact joint law."""
    target, draft, prompt = target_and_draft()
    law = two_token_law(target, prompt, temperature, top_k)
    assert total_variation(two_token_frequencies(draft, target, prompt, temperature, top_k), law) < TOLERANCE


def test_a_rejected_draft_is_replaced_from_the_residual():
    """sample.verify on distributions where every outcome is known: p = (.5, .5, 0, 0), q = (0, .5,
    .5, 0). Draft 2 has p = 0: always rejected, and its replacement comes from norm(max(0, p - q)) =
    token 0 alone (resampling from p would give token 1 half the time). Draft 1 has p = q: always
    kept, followed by the bonus token from the last p."""
    ps = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    qs = torch.tensor([[0.0, 0.5, 0.5, 0.0]])
    for seed in range(32):
        generator = torch.Generator().manual_seed(seed)
        accepted, token = verify(ps, qs, torch.tensor([2]), generator)
        assert (accepted, int(token)) == (0, 0), seed
        accepted, token = verify(ps, qs, torch.tensor([1]), generator)
        assert (accepted, int(token)) == (1, 3), seed


# ---------------------------------------------------------------------------------------------
# Command line

def save(model, path):
    checkpoint.save(path, checkpoint.make_checkpoint(model))
    return str(path)


def test_draft_of_another_tokenizer_is_a_user_error(tmp_path):
    target = save(random_gpt(40), tmp_path / "target.pt")
    draft = save(random_gpt(41, n_layer=1, n_head=1, tokenizer="gpt2"), tmp_path / "draft.pt")
    with pytest.raises(UserError, match="tokenizer mismatch"):
        sample.main(["--ckpt", target, "--draft", draft, "--device", "cpu"])


def test_cli_samples_speculatively_and_benches(tmp_path, capsys):
    target = save(random_gpt(42, block_size=64), tmp_path / "target.pt")
    draft = save(random_gpt(43, n_layer=1, n_head=1, block_size=64), tmp_path / "draft.pt")
    common = ["--ckpt", target, "--draft", draft, "--device", "cpu", "--max_new_tokens", "12",
              "--prompt", "Hi", "--temperature", "0"]
    sample.main(common)
    out = capsys.readouterr().out
    assert "drafts accepted" in out and out.count("---") == 2
    sample.main(common + ["--bench", "--num_samples", "2"])
    out = capsys.readouterr().out
    assert "speculative" in out and "acceptance" in out and "tokens/s" in out
    with pytest.raises(UserError, match="--draft"):
        sample.main(["--ckpt", target, "--bench", "--device", "cpu"])


def test_family_experiment_measures_every_pair(tmp_path):
    """experiments/speculative.py on a fake run folder of three members per family. The progressive
    members are one model saved three times: a draft identical to its target is always accepted. The
    independent rows hold what sample.py measures for the same pair, prompts, mode and seed."""
    spec = importlib.util.spec_from_file_location("speculative", ROOT / "experiments" / "speculative.py")
    experiment = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(experiment)
    independent = {}
    for i, size in enumerate(["20k", "50k", "120k"]):
        save(random_gpt(49, block_size=64), tmp_path / "run" / "progressive" / f"ckpt_{size}.pt")
        independent[size] = random_gpt(50 + i, n_layer=i + 1, block_size=64)
        save(independent[size], tmp_path / "run" / "independent" / f"ckpt_{size}.pt")
    experiment.main(["--run", str(tmp_path / "run"), "--out", str(tmp_path / "out"), "--tokens", "5",
                     "--repeats", "1", "--clock", "wall", "--seed", "3"])  # cpu would set one thread for the session
    result = json.loads((tmp_path / "out" / "speculative.json").read_text())
    rows = {(r["family"], r["draft"], r["target"], r["mode"]): r for r in result["rows"]}
    assert len(result["rows"]) == 2 * 3 * 2  # families x (2 adjacent + smallest->largest) x modes
    assert len(rows) == 3 * 2 + 2  # the progressive pairs share one name
    prompts = [torch.tensor(list(p.encode())) for p in experiment.PROMPTS]
    for draft, target in (("20k", "50k"), ("50k", "120k"), ("20k", "120k")):
        d, t = independent[draft], independent[target]
        for mode, temperature in experiment.MODES.items():
            want = speculative_acceptance(d, t, prompts, 5, 4, temperature, seed=3, n_vocab=256)["acceptance"]
            assert rows[("independent", size_name(d.cfg), size_name(t.cfg), mode)]["acceptance"] == want
    assert all(r["acceptance"] == 1.0 for r in result["rows"] if r["family"] == "progressive")
    md = (tmp_path / "out" / "speculative.md").read_text()
    assert result["command"] in md and md.count("\n| progressive |") == 6
