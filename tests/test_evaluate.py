"""evaluate.py, zeroshot.py and report.py: scoring conventions, KL, speculative acceptance and the report,
on known answers."""
import json
import math
import statistics
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn

import checkpoint
import evaluate as ev
import report as rp
import sample
import zeroshot as zs
from conftest import SHARED, need_shared, run_script
from expand import expand
from model import GPT, GPTConfig
from tokenizer import get_tokenizer
from util import UserError, run_cli

BYTES = get_tokenizer("bytes")
LOG256 = math.log(256)
EVAL_DIR = SHARED / "data" / "eval"


# ---------------------------------------------------------------------------------------------
# Helpers: fake models, tiny checkpoints, data in the shared formats

class FakeLM(nn.Module):
    """Stands in for a GPT: logits = fn(idx); refuses inputs longer than its context, as GPT does."""

    def __init__(self, fn, block_size=64, vocab_size=256):
        super().__init__()
        self.cfg = SimpleNamespace(block_size=block_size, vocab_size=vocab_size)
        self.anchor = nn.Parameter(torch.zeros(1))  # the evaluator reads the device from parameters
        self.fn = fn

    def forward(self, idx, cache=None):  # fn sees only the tokens given: the cache is for GPTs
        assert idx.size(1) <= self.cfg.block_size
        return self.fn(idx), None


def uniform_lm(block_size=64):
    return FakeLM(lambda idx: torch.zeros(*idx.shape, 256), block_size)


def constant_lm(probs: np.ndarray):
    """Every position predicts the same distribution `probs`."""
    logits = torch.tensor(np.log(probs), dtype=torch.float32)
    return FakeLM(lambda idx: logits.expand(*idx.shape, len(probs)), vocab_size=len(probs))


def scripted_lm(golds: list[list[int]], boost: float = 10.0):
    """Knows the gold sequences: where the input so far is a prefix of one, its next token gets
    logit `boost` (0 elsewhere)."""
    def fn(idx):
        out = torch.zeros(*idx.shape, 256)
        for b, row in enumerate(idx.tolist()):
            for g in golds:
                for t in range(min(len(row), len(g) - 1)):
                    if row[t] != g[t]:
                        break
                    out[b, t, g[t + 1]] = boost
        return out
    return FakeLM(fn, block_size=512)


def tiny_gpt(n_head=1, block_size=64, tokenizer="bytes", seed=None):
    if seed is not None:
        torch.manual_seed(seed)
    vocab = 256 if tokenizer == "bytes" else 50304
    model = GPT(GPTConfig(1, n_head, 8, 32 * n_head, vocab, block_size, tokenizer), use_kernels=False)
    return model.eval()


def save_ckpt(path, model, **meta):
    path.parent.mkdir(parents=True, exist_ok=True)
    checkpoint.save(path, checkpoint.make_checkpoint(model, meta=meta))
    return path


def write_val(folder, tokens: np.ndarray, tokenizer="bytes"):
    folder.mkdir(parents=True, exist_ok=True)
    dtype = np.uint8 if tokenizer == "bytes" else np.uint16
    tokens.astype(dtype).tofile(folder / "val.bin")
    meta = {"tokenizer": tokenizer, "vocab_size": 256 if tokenizer == "bytes" else 50257,
            "dtype": np.dtype(dtype).name, "train_tokens": 0, "val_tokens": len(tokens)}
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


def random_text(rng, n_words):
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    return " ".join("".join(rng.choice(letters, rng.integers(2, 7))) for _ in range(n_words))


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def write_task_files(folder, rng, n=6):
    """n items of every task, in the formats of ../shared/data/eval."""
    folder.mkdir(parents=True, exist_ok=True)
    words = lambda k=4: random_text(rng, k)  # noqa: E731
    mc = lambda q, k: {"query": q, "choices": [words() for _ in range(k)],  # noqa: E731
                       "gold": int(rng.integers(k))}
    files = {
        "lambada": [{"text": words(8)} for _ in range(n)],
        "arc_easy": [mc("Question: " + words(), 4) for _ in range(n)],
        "arc_challenge": [mc("Question: " + words(), 4) for _ in range(n)],
        "openbookqa": [mc(words(), 4) for _ in range(n)],
        "piqa": [{"goal": words(), "sol1": words(), "sol2": words()} for _ in range(n)],
        "hellaswag": [{"query": f"{words(1)}: {words(6)}", "endings": [words() for _ in range(4)],
                       "label": int(rng.integers(4))} for _ in range(n)],
        "winogrande": [{"context_options": [words(5), words(5)], "continuation": words(3),
                        "gold": int(rng.integers(2))} for _ in range(n)],
    }
    for task, records in files.items():
        write_jsonl(folder / zs.LOCAL_FILES[task], records)
    (folder / zs.PIQA_LABELS).write_text("".join(f"{rng.integers(2)}\n" for _ in range(n)))
    return folder


@torch.no_grad()
def reference_metrics(model, task, items, tok=BYTES) -> dict:
    """acc (and acc_norm) the plain way, one request at a time and unbatched: the continuation's
    log-likelihood from a forward over the request's last block_size + 1 tokens; an item with a
    continuation longer than the context is left out; LAMBADA counts greedy hits."""
    block, correct, correct_norm = model.cfg.block_size, [], []
    for it in items:
        loglik, hits = [], []
        for ctx, cont in (zs.encode_pair(tok, c, x) for c, x in it.requests):
            if len(cont) > block:
                break
            seq = torch.tensor(ctx + cont)[-(block + 1):]
            logp = torch.log_softmax(model(seq[None, :-1])[0][0, -len(cont):].float(), dim=-1)
            loglik.append(logp[torch.arange(len(cont)), seq[-len(cont):]].sum().item())
            hits.append(bool((logp.argmax(-1) == seq[-len(cont):]).all()))
        else:
            correct.append(hits[0] if task == "lambada" else int(np.argmax(loglik)) == it.gold)
            if it.choice_chars is not None:
                correct_norm.append(int(np.argmax(np.array(loglik) / it.choice_chars)) == it.gold)
    return {"acc": np.mean(correct), "n": len(correct), **({"acc_norm": np.mean(correct_norm)} if correct_norm else {})}


def cli_error(capsys, argv) -> str:
    """A user mistake: exit code 2 and exactly one `error:` line."""
    capsys.readouterr()  # what ran before is not part of this error
    with pytest.raises(SystemExit) as e:
        run_cli(lambda: ev.main(argv))
    assert e.value.code == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def items_with_gold(items, tok=BYTES):
    """Token sequences context + gold continuation of each item, for the scripted model."""
    return [sum(zs.encode_pair(tok, *it.requests[it.gold]), []) for it in items]


def requests_of(items, tok=BYTES):
    return [zs.encode_pair(tok, c, x) for it in items for c, x in it.requests]


# ---------------------------------------------------------------------------------------------
# Tokenization of (context, continuation), as lm-eval does it

def test_encode_pair_moves_trailing_spaces_bytes():
    ctx, cont = zs.encode_pair(BYTES, "Question: why?\nAnswer: ", "yes")
    assert ctx == BYTES.encode("Question: why?\nAnswer:") and cont == BYTES.encode(" yes")
    assert zs.encode_pair(BYTES, "", "abc") == ([BYTES.eot], BYTES.encode("abc"))


def test_encode_pair_gpt2(monkeypatch):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(need_shared("tiktoken_cache")))
    tok = get_tokenizer("gpt2")
    # " world" is one token: the space belongs to the continuation, not to the context
    assert zs.encode_pair(tok, "Hello", " world") == ([15496], [995])
    assert zs.encode_pair(tok, "Hello ", "world") == ([15496], [995])


def test_tokenizers_own_token_bytes_and_byte_lengths(monkeypatch):
    """token_bytes joins to decode's text (the separator included); byte_lengths counts the UTF-8
    bytes of text, the separator none."""
    text = "naïve café — 日本語 🙂 plain"
    tokenizers = [BYTES]
    if (SHARED / "tiktoken_cache").is_dir():
        monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(SHARED / "tiktoken_cache"))
        tokenizers.append(get_tokenizer("gpt2"))
    for tok in tokenizers:
        ids = tok.encode(text) + [tok.eot] + tok.encode("end")
        assert b"".join(tok.token_bytes(i) for i in ids).decode() == tok.decode(ids) == text + "<|endoftext|>end"
        lengths = tok.byte_lengths()
        assert lengths.shape == (tok.vocab_size,) and lengths[tok.eot] == 0
        assert lengths[ids].sum() == len((text + "end").encode()), tok.name


def test_zeroshot_and_report_do_not_import_evaluate():
    """The dependencies run one way: evaluate.py uses zeroshot.py and report.py, never the reverse."""
    proc = run_script("-c", "import sys, report, zeroshot; print('evaluate' in sys.modules)")
    assert proc.returncode == 0 and proc.stdout.split() == ["False"], proc.stderr[-2000:]


# ---------------------------------------------------------------------------------------------
# Zero-shot scoring

@pytest.mark.fast
@pytest.mark.parametrize("task", ["arc_easy", "arc_challenge", "openbookqa", "piqa", "hellaswag",
                                  "winogrande"])
def test_scripted_scorer_gets_everything_right(tmp_path, task):
    items = zs.load_items(task, write_task_files(tmp_path, np.random.default_rng(), n=8), None)
    model = scripted_lm(items_with_gold(items))
    metrics = zs.evaluate_task(model, task, items, requests_of(items), batch_size=3)
    assert metrics["acc"] == 1.0 and metrics["n"] == 8
    assert metrics.get("acc_norm", 1.0) == 1.0
    assert ("acc_norm" in metrics) == (task != "winogrande")  # WinoGrande: acc only


def test_uniform_model_on_hellaswag_ties_pick_the_first(tmp_path):
    rng = np.random.default_rng()
    n = 400  # endings of equal length: every choice ties, argmax picks choice 0 -> acc = P(gold = 0)
    endings = lambda: ["".join(rng.choice(list("abcdefgh"), 12)) for _ in range(4)]  # noqa: E731
    records = [{"query": "Act: the man", "endings": endings(), "label": int(rng.integers(4))}
               for _ in range(n)]
    write_jsonl(tmp_path / zs.LOCAL_FILES["hellaswag"], records)
    items = zs.load_items("hellaswag", tmp_path, None)
    metrics = zs.evaluate_task(uniform_lm(), "hellaswag", items, requests_of(items), batch_size=64)
    expected = np.mean([r["label"] == 0 for r in records])
    assert metrics["acc"] == pytest.approx(expected) and metrics["acc_norm"] == pytest.approx(expected)
    assert abs(metrics["acc"] - 0.25) < 0.1


def test_uniform_model_acc_vs_acc_norm_follow_lengths(tmp_path):
    """Uniform over 256 bytes: log p(" " + ending) = -(chars + 1) ln 256. acc picks the shortest
    ending, acc_norm (divided by chars) the longest; the first of equals in both."""
    rng = np.random.default_rng()
    lengths = rng.integers(3, 9, size=(60, 4))
    records = [{"query": "Act: she", "endings": ["x" * k for k in row], "label": int(rng.integers(4))}
               for row in lengths]
    write_jsonl(tmp_path / zs.LOCAL_FILES["hellaswag"], records)
    items = zs.load_items("hellaswag", tmp_path, None)
    metrics = zs.evaluate_task(uniform_lm(), "hellaswag", items, requests_of(items), batch_size=16)
    gold = np.array([r["label"] for r in records])
    assert metrics["acc"] == pytest.approx(np.mean(lengths.argmin(1) == gold))
    assert metrics["acc_norm"] == pytest.approx(np.mean(lengths.argmax(1) == gold))


@pytest.mark.fast
def test_acc_norm_divides_by_characters_not_tokens(tmp_path):
    """Every letter costs ln 510 and the space ln 2: " " + n letters scores -ln 2 - n ln 510.
    acc picks the shortest ending; acc_norm, per character, the longest (the space's cost shrinks with
    n); per token (n + 1 of them) the shortest again. Fixed items: acc 1/3, acc_norm 2/3 (1/3 per token)."""
    probs = np.full(256, 0.5 / 255)
    probs[ord(" ")] = 0.5
    records = [{"query": "Question: which?", "choices": ["ab", "abcdef", "abcd"], "gold": 1},  # longest
               {"query": "Question: which?", "choices": ["abcdefg", "abc", "abcde"], "gold": 0},  # longest
               {"query": "Question: which?", "choices": ["abcde", "abcdefgh", "ab"], "gold": 2}]  # shortest
    write_jsonl(tmp_path / zs.LOCAL_FILES["arc_easy"], records)
    items = zs.load_items("arc_easy", tmp_path, None)
    assert [it.choice_chars for it in items] == [[2, 6, 4], [7, 3, 5], [5, 8, 2]]
    m = zs.evaluate_task(constant_lm(probs), "arc_easy", items, requests_of(items), batch_size=4)
    assert m["n"] == 3 and m["acc"] == pytest.approx(1 / 3) and m["acc_norm"] == pytest.approx(2 / 3)
    loglik = np.log(0.5) - np.array([2, 6, 4]) * np.log(510)  # the first item, by hand
    assert zs.choose(loglik, [2, 6, 4]) == (0, 1) and np.argmax(loglik / np.array([3, 7, 5])) == 0


@pytest.mark.fast
def test_choose_takes_first_of_ties():
    assert zs.choose(np.array([-2.0, -1.0, -1.0]), [1, 1, 1]) == (1, 1)
    assert zs.choose(np.array([-4.0, -3.0]), [4, 1]) == (1, 0)  # -1 per char beats -3 per char


@pytest.mark.fast
def test_lambada_handcrafted_item(tmp_path):
    write_jsonl(tmp_path / zs.LOCAL_FILES["lambada"], [{"text": "the cat sat on the mat"}])
    items = zs.load_items("lambada", tmp_path, None)
    assert items[0].requests == [("the cat sat on the", " mat")]
    boost = 5.0
    log_p = boost - math.log(math.exp(boost) + 255)  # the scripted model's log-prob of each gold byte
    m = zs.evaluate_task(scripted_lm(items_with_gold(items), boost), "lambada", items, requests_of(items), 4)
    assert m["acc"] == 1.0 and m["ppl"] == pytest.approx(math.exp(-4 * log_p), rel=1e-5)
    m = zs.evaluate_task(uniform_lm(), "lambada", items, requests_of(items), 4)
    assert m["acc"] == 0.0 and m["ppl"] == pytest.approx(256.0 ** 4, rel=1e-4)  # " mat": 4 bytes


def test_requests_are_left_truncated_to_the_context():
    """A bigram model's score does not depend on what truncation dropped; the model never sees
    more than block_size tokens (FakeLM asserts it)."""
    table = torch.log_softmax(torch.randn(256, 256), dim=-1)
    model = FakeLM(lambda idx: table[idx], block_size=8)
    ctx, cont = BYTES.encode("a long context that does not fit"), BYTES.encode(" end")
    loglik, greedy = zs.score_requests(model, [(ctx, cont), (ctx[-3:], cont)], batch_size=2)
    seq = ctx + cont
    expected = sum(table[seq[i - 1], seq[i]].item() for i in range(len(ctx), len(seq)))
    assert loglik == pytest.approx([expected, expected], abs=1e-4)


def test_items_whose_continuation_exceeds_the_context_are_excluded_and_counted(tmp_path):
    """Uniform model, context 16 bytes: acc picks the shortest ending, acc_norm the longest (first of
    equals). The third item has a 20-char ending (21 tokens with its space): it is left out of acc and
    acc_norm alike, though its other endings fit, and counted; the scored items are the denominator."""
    endings = [["abc", "abcde", "abcdefg", "abcdefghi"],  # acc right, acc_norm wrong
               ["abcdef", "abcd", "abcdefgh", "abcde"],  # acc wrong, acc_norm right
               ["xyz", "x" * 20, "xyzw", "xyzwv"],  # too long: would count as right for acc
               ["abc", "abd", "abe", "abf"]]  # all tie: choice 0 for both, right
    write_jsonl(tmp_path / zs.LOCAL_FILES["hellaswag"],
                [{"query": "Act: he", "endings": e, "label": g} for e, g in zip(endings, [0, 2, 0, 0])])
    items = zs.load_items("hellaswag", tmp_path, None)
    requests = requests_of(items)
    assert [len(cont) for _, cont in requests[8:12]] == [4, 21, 5, 6]
    m = zs.evaluate_task(uniform_lm(block_size=16), "hellaswag", items, requests, batch_size=5)
    assert m["n"] == 3 and m["n_excluded_too_long"] == 1
    assert m["acc"] == pytest.approx(2 / 3) and m["acc_norm"] == pytest.approx(2 / 3)
    assert m["acc_stderr"] == pytest.approx(np.std([1, 0, 1], ddof=1) / math.sqrt(3))
    assert m["note"] == ("hellaswag: 1 of 4 items not scored: a choice is longer than the model's "
                         "16-token context (lm-eval refuses such items)")
    m = zs.evaluate_task(uniform_lm(block_size=64), "hellaswag", items, requests, batch_size=5)
    assert m["n"] == 4 and m["n_excluded_too_long"] == 0 and "note" not in m
    # nothing fits: no accuracy at all rather than one over zero items
    m = zs.evaluate_task(uniform_lm(block_size=3), "hellaswag", items, requests, batch_size=5)
    assert m == {"acc": None, "acc_stderr": None, "acc_norm": None, "n": 0, "n_excluded_too_long": 4,
                 "note": m["note"]}


def test_lambada_target_longer_than_the_context_is_excluded(tmp_path):
    write_jsonl(tmp_path / zs.LOCAL_FILES["lambada"], [{"text": "the cat sat on the mat"},
                                                       {"text": "it was " + "a" * 12}])
    items = zs.load_items("lambada", tmp_path, None)
    m = zs.evaluate_task(uniform_lm(block_size=8), "lambada", items, requests_of(items), 4)
    assert (m["n"], m["n_excluded_too_long"]) == (1, 1)
    assert m["acc"] == 0.0 and m["ppl"] == pytest.approx(256.0 ** 4, rel=1e-4)  # " mat" alone


def test_continuation_of_exactly_the_context_is_scored_one_more_is_not():
    """The boundary lm-eval draws (len(continuation) <= max_length): a continuation of block_size
    tokens is scored whole, its first token predicted from the context's last."""
    ctx = BYTES.encode("some context")
    requests = [(ctx, BYTES.encode("x" * 16)), (ctx, BYTES.encode("x" * 17))]
    assert zs.fits(requests, 16).tolist() == [True, False]
    loglik, greedy = zs.score_requests(uniform_lm(block_size=16), requests, batch_size=2)
    assert loglik[0] == pytest.approx(-16 * LOG256, rel=1e-6) and np.isnan(loglik[1])
    assert not greedy.any()


def test_context_is_cut_from_the_left_keeping_the_whole_continuation():
    """Context + continuation longer than the context window, the continuation alone not: a real
    (attending) model scores it exactly as if given only the context's last tokens that fit, which
    is what lm-eval does; cutting the context shorter changes the score, so the test would see it."""
    model = tiny_gpt(block_size=16, seed=0)
    ctx, cont = BYTES.encode("a context of thirty-two bytes!!!"), BYTES.encode(" ten bytes")
    keep = 16 + 1 - len(cont)  # window: block_size + 1 tokens, the last only a target
    requests = [(ctx, cont), (ctx[-keep:], cont), (ctx[-keep + 2:], cont)]
    loglik, greedy = zs.score_requests(model, requests, batch_size=3)
    seq = torch.tensor([(ctx + cont)[-17:]])
    with torch.no_grad():
        logits, _ = model(seq[:, :-1])
    logp = torch.log_softmax(logits[0, -len(cont):], dim=-1)
    expected = logp.gather(-1, torch.tensor(cont)[:, None]).sum().item()
    assert loglik[0] == pytest.approx(expected, abs=1e-4) and loglik[1] == pytest.approx(expected, abs=1e-4)
    assert abs(loglik[2] - expected) > 1e-3


def test_real_eval_files_too_long_counts_at_256_bytes():
    """The counts fits' docstring quotes: items with a continuation over 256 bytes."""
    need_shared("data/eval")
    for task, (first_200, total) in {"piqa": (15, 139), "hellaswag": (0, 1143)}.items():
        items = zs.load_items(task, EVAL_DIR, None)
        starts = np.cumsum([0] + [len(it.requests) for it in items])
        fit = zs.fits(requests_of(items), 256)
        excluded = [not fit[a:b].all() for a, b in zip(starts[:-1], starts[1:])]
        assert (sum(excluded[:200]), sum(excluded)) == (first_200, total), task


def test_hellaswag_preprocessing():
    # lm-eval's function exactly: strip first, so a leading marker leaves its space behind
    assert zs.hellaswag_clean(" Act: How to x [title] Do [step] it. ") == "Act: How to x. Do it."
    assert zs.hellaswag_clean("[header] How") == " How"


# ---------------------------------------------------------------------------------------------
# Perplexity, bits per byte, KL

@pytest.mark.fast
def test_uniform_model_perplexity_and_bits_per_byte():
    rng = np.random.default_rng()
    windows = ev.val_windows(rng.integers(0, 255, 5000), block_size=64, max_tokens=1024)
    r = ev.perplexity(uniform_lm(), windows, BYTES.byte_lengths(), batch_size=4)
    assert r["ppl"] == pytest.approx(256, rel=1e-5) and r["bpb"] == pytest.approx(8.0, rel=1e-6)
    assert r["tokens"] == r["bytes"] == 16 * 64
    tokens = np.full(5000, ord("a"))
    tokens[::10] = BYTES.eot  # separators are predicted but are no text: bpb counts fewer bytes
    r = ev.perplexity(uniform_lm(), ev.val_windows(tokens, 64, 1024), BYTES.byte_lengths(), 4)
    assert r["bpb"] == pytest.approx(r["loss"] * r["tokens"] / math.log(2) / r["bytes"]) and r["bpb"] > 8


def test_gpt2_bits_per_byte_and_scoring(monkeypatch):
    """GPT-2 BPE: a uniform model's bpb is its nats over the UTF-8 bytes the target tokens decode
    to; a tiny GPT-2-vocabulary model scores real items as the plain reference does."""
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(need_shared("tiktoken_cache")))
    need_shared("data/eval")
    tok = get_tokenizer("gpt2")
    rng = np.random.default_rng()
    tokens = np.array(tok.encode(random_text(rng, 400)))  # ASCII: windows decode to whole characters
    windows = ev.val_windows(tokens, 32, 256)
    uniform = FakeLM(lambda idx: torch.zeros(*idx.shape, 50304), block_size=32, vocab_size=50304)
    r = ev.perplexity(uniform, windows, tok.byte_lengths(), batch_size=3)
    n_bytes = sum(len(tok.decode(w[1:].tolist()).encode()) for w in windows)
    assert r["bytes"] == n_bytes
    assert r["bpb"] == pytest.approx(r["tokens"] * math.log2(50304) / n_bytes, rel=1e-5)
    items = zs.load_items("piqa", EVAL_DIR, 4)
    model = tiny_gpt(tokenizer="gpt2", seed=0)
    m = zs.evaluate_task(model, "piqa", items, requests_of(items, tok), batch_size=3)
    want = reference_metrics(model, "piqa", items, tok)
    assert m["n"] == want["n"] == 4 and m["acc"] == want["acc"] and m["acc_norm"] == want["acc_norm"]


def test_val_windows_deterministic_evenly_spread_and_disjoint():
    tokens = np.arange(10_000)
    w = ev.val_windows(tokens, 64, 4096)
    assert w.shape == (64, 65) and torch.equal(w, ev.val_windows(tokens, 64, 4096))
    assert (w[:, 1:] - w[:, :-1] == 1).all()  # each window is a slice of the split
    starts = w[:, 0].numpy()
    assert starts[0] == 0 and w[-1, -1] == tokens[-1]  # from the first token to the last
    assert (np.diff(starts) >= 64).all()  # no target token is counted twice


def test_kl_of_model_with_itself_is_zero():
    model = tiny_gpt()
    windows = ev.val_windows(np.random.default_rng().integers(0, 256, 3000), 64, 512)
    kl = ev.pair_kl(model, model, windows, batch_size=4)
    assert kl["kl_large_small"] == pytest.approx(0, abs=1e-7)
    assert kl["kl_small_large"] == pytest.approx(0, abs=1e-7)


def test_kl_matches_closed_form_and_direction():
    rng = np.random.default_rng()
    p, q = rng.dirichlet(np.ones(6)), rng.dirichlet(np.ones(6))
    closed = lambda a, b: float(np.sum(a * np.log(a / b)))  # noqa: E731
    got = ev.kl_divergence(torch.tensor(np.log(p)), torch.tensor(np.log(q))).item()
    assert got == pytest.approx(closed(p, q), rel=1e-9)
    windows = torch.zeros(3, 9, dtype=torch.long)
    kl = ev.pair_kl(constant_lm(q), constant_lm(p), windows, batch_size=2)  # small = q, large = p
    assert kl["kl_large_small"] == pytest.approx(closed(p, q), rel=1e-4)
    assert kl["kl_small_large"] == pytest.approx(closed(q, p), rel=1e-4)
    # every next token is 0: each member's loss is -log of its probability of token 0
    assert kl["loss_small"] == pytest.approx(-np.log(q[0]), rel=1e-4)
    assert kl["loss_large"] == pytest.approx(-np.log(p[0]), rel=1e-4)


# ---------------------------------------------------------------------------------------------
# Speculative decoding

@pytest.mark.parametrize("greedy", [True, False])
def test_speculative_acceptance_of_model_with_itself_is_total(greedy):
    model = tiny_gpt(seed=int(np.random.default_rng().integers(1 << 30)))
    prompts = torch.randint(0, 256, (2, 16))
    r = ev.speculative_acceptance(model, model, prompts, n_tokens=20, k=4, greedy=greedy, seed=0)
    assert r["acceptance"] == 1.0 and r["tokens_per_round"] == 5.0


def test_greedy_speculation_accepts_while_argmaxes_agree():
    draft = constant_lm(np.array([0.1, 0.6, 0.3]))
    agreeing, disagreeing = constant_lm(np.array([0.3, 0.4, 0.3])), constant_lm(np.array([0.2, 0.3, 0.5]))
    prompts = torch.zeros(1, 4, dtype=torch.long)
    assert ev.speculative_acceptance(draft, agreeing, prompts, 12, 4, True, 0)["acceptance"] == 1.0
    r = ev.speculative_acceptance(draft, disagreeing, prompts, 12, 4, True, 0)
    assert r["acceptance"] == 0.0 and r["tokens_per_round"] == 1.0


# ---------------------------------------------------------------------------------------------
# Loading task data, the real files, offline behaviour

def test_real_eval_files_parse_with_full_counts():
    need_shared("data/eval")
    counts = {"lambada": 5153, "piqa": 1838, "hellaswag": 10042, "arc_easy": 2376, "arc_challenge": 1172,
              "openbookqa": 500, "winogrande": 1267}
    for task, n in counts.items():
        items = zs.load_items(task, EVAL_DIR, None)
        assert len(items) == n and all(0 <= it.gold < len(it.requests) for it in items), task
    first = zs.load_items("hellaswag", EVAL_DIR, 1)[0]
    assert first.gold == 3 and first.requests[3] == ("Roof shingle removal: A man is sitting on a roof. he",
                                                      " starts pulling up roofing on a roof.")
    assert zs.load_items("arc_easy", EVAL_DIR, 1)[0].requests[0][0].endswith("?\nAnswer:")


def test_real_eval_files_score_as_the_plain_reference_does():
    """The first items of every real task, a random tiny GPT: batched, padded scoring gives the
    accuracies of scoring each request alone (reference_metrics)."""
    need_shared("data/eval")
    model = tiny_gpt(block_size=128, seed=0)
    for task in zs.ZERO_SHOT:
        items = zs.load_items(task, EVAL_DIR, 6)
        m = zs.evaluate_task(model, task, items, requests_of(items), batch_size=8)
        want = reference_metrics(model, task, items)
        assert m["n"] == want["n"] and m["n"] + m["n_excluded_too_long"] == 6, task  # PIQA: some over 128 bytes
        assert m["acc"] == pytest.approx(want["acc"]) and m.get("acc_norm") == pytest.approx(want.get("acc_norm")), task


def test_wikitext_from_a_file_or_skipped_with_a_note(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    raw = tmp_path / "wiki.test.raw"
    raw.write_text(" = Title = \n" + random_text(np.random.default_rng(), 200))
    notes = []
    w = ev.wikitext_windows(str(raw), BYTES, 32, 10_000, notes)
    assert w.shape[1] == 33 and w[0, :12].tolist() == BYTES.encode(" = Title = \n") and notes == []
    assert ev.wikitext_windows("hf", BYTES, 32, 10_000, notes) is None and "WikiText" in notes[0]


def test_hub_path_fails_with_one_clear_error(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="--data_dir"):
        zs.load_items("piqa", None, 2)


def test_read_history_sources(tmp_path):
    eval_line = {"step": 5, "tokens": 500, "flops_total": 1e6, "val_loss": 3.0}
    ckpt = tmp_path / "run" / "ckpt.pt"
    member = ev.Member("progressive", ckpt, None, {}, [eval_line])
    assert ev.read_history(member) == (f"{ckpt} (history in the checkpoint)", [eval_line])
    ckpt.parent.mkdir()
    train_line = {"step": 4, "tokens": 400, "flops_total": 8e5, "loss": 3.1}  # no val_loss: not plotted
    cut = '{"st'  # a last line cut short by a crash
    (ckpt.parent / "metrics.jsonl").write_text(f"{json.dumps(train_line)}\n{json.dumps(eval_line)}\n{cut}")
    assert ev.read_history(member) == (str(ckpt.parent / "metrics.jsonl"), [eval_line])  # cut line skipped
    elsewhere = tmp_path / "log.jsonl"
    write_jsonl(elsewhere, [eval_line, eval_line])
    member.meta["metrics"] = str(elsewhere)
    assert ev.read_history(member) == (str(elsewhere), [eval_line, eval_line])
    assert ev.read_history(ev.Member("independent", tmp_path / "x.pt", None, {}, [])) == (None, [])


# ---------------------------------------------------------------------------------------------
# The command line: report, bad input

@pytest.fixture
def family(tmp_path):
    """Two tiny progressive members (with training logs) and two independent ones, bytes data."""
    rng = np.random.default_rng()
    prog = [save_ckpt(tmp_path / f"prog{i}" / "ckpt.pt", tiny_gpt(n_head=i + 1), flops_total=f) for i, f in
            enumerate([1e9, 3e9])]
    # the larger member grown from the smaller with FPI's equal split (untrained: every copy a twin)
    grown = expand(checkpoint.load(prog[0]), GPTConfig(1, 2, 8, 64, 256, 64, "bytes"), method="fpi", noise=0.0)
    grown["meta"]["flops_total"] = 3e9
    checkpoint.save(prog[1], grown)
    for i, (path, start) in enumerate(zip(prog, [0.0, 1e9])):
        lines = [{"step": s, "tokens": s * 100, "flops_total": start + s * 1e8, "val_loss": 5.5 - 0.1 * s - i}
                 for s in range(1, 11)]
        write_jsonl(path.parent / "metrics.jsonl", lines)
    base = [save_ckpt(tmp_path / f"base{i}.pt", tiny_gpt(n_head=i + 1), flops_total=f) for i, f in
            enumerate([1e9, 4e9])]
    val = write_val(tmp_path / "data", rng.integers(0, 255, 20_000))
    tasks = write_task_files(tmp_path / "eval", rng, n=4)
    small, large = "custom(L1,d8)", "custom(L1,d16)"
    plan = {"progressive": [{"size": small, "flops": 1e9, "cumulative_flops": 1e9},
                            {"size": large, "flops": 1.5e9, "cumulative_flops": 2.5e9}],
            "independent": [{"size": small, "flops": 1e9, "cumulative_flops": 1e9},
                            {"size": large, "flops": 4e9, "cumulative_flops": 5e9}],
            "progressive_flops": 2.5e9, "independent_flops": 5e9, "saving": 0.5}  # as flops.py --json writes
    write_jsonl(tmp_path / "plan.json", [plan])
    return SimpleNamespace(prog=prog, base=base, val=val, tasks=tasks, plan=tmp_path / "plan.json",
                           out=tmp_path / "report")


def test_report_renders_for_two_tiny_families(family):
    proc = run_script("evaluate.py", "--ckpt", *family.prog, "--baseline", *family.base,
                      "--val-data", family.val, "--data-dir", family.tasks, "--out", family.out,
                      "--limit", 3, "--val-tokens", 512, "--spec-prompts", 2, "--spec-tokens", 8,
                      "--plan", family.plan, "--device", "cpu", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((family.out / "report.json").read_text())
    assert [(m["family"], m["name"]) for m in report["members"]] == \
        [(f, n) for f in ("progressive", "independent") for n in ("custom(L1,d8)", "custom(L1,d16)")]
    for m in report["members"]:
        assert set(m["tasks"]) == set(zs.ZERO_SHOT) and all(t["n"] == 3 for t in m["tasks"].values())
        assert m["ppl"]["tokens"] == 512 and m["ppl"]["bpb"] > 0
    assert len(report["members"][0]["history"]) == 10 and report["members"][2]["history"] == []
    assert [p["family"] for p in report["pairs"]] == ["progressive", "independent"]
    # speculative acceptance: the grown member drafted for by its own source (the same function) keeps
    # every draft; the independent pair's is sample.py's on the report's prompts (the validation
    # windows' starts), recomputed here
    assert all(v["acceptance"] == 1.0 for v in report["pairs"][0]["spec"].values())
    prompts = ev.val_windows(np.fromfile(family.val / "val.bin", dtype=np.uint8), 64, 512)[:2, :32]
    target, draft = sample.load_pair(family.base[1], family.base[0], torch.device("cpu"))
    for mode, v in report["pairs"][1]["spec"].items():
        assert v == ev.speculative_acceptance(draft, target, prompts, 8, 4, mode == "greedy", 0), mode
    # the grown member is its source under FPI (untrained): the same function, KL 0 up to rounding
    assert abs(report["pairs"][0]["kl"]["kl_large_small"]) < 1e-6 and report["pairs"][1]["kl"]["kl_large_small"] > 0
    assert report["flops"] == {"progressive": 3e9, "independent": 5e9, "saving": pytest.approx(0.4),
                               "planned": {"progressive": 2.5e9, "independent": 5e9, "saving": 0.5}}
    assert [m["flops_planned"] for m in report["members"]] == [1e9, 2.5e9, 1e9, 5e9]  # family up to it
    twins = report["members"][1]["twins"]
    assert "twins" not in report["members"][0] and all(r["twins"] == r["copies"] > 0 for r in twins), twins
    md = (family.out / "report.md").read_text()
    assert md.startswith("# Family evaluation\n\n## Verdict\n\nFLOPs: ") and report["verdict"].startswith("FLOPs: ")
    copied = sum(r["copies"] for r in twins)
    for heading in ["## Members", "## KL divergence", "## Speculative decoding", "## FLOPs", "## Growth check",
                    f"| progressive custom(L1,d16) | {copied} | {copied} |", "saved 40.0 % (planned 50.0 %)",
                    "| progressive | custom(L1,d16) | 2e+09 | 3e+09 | 2.5e+09 | 1.200 |",
                    "| independent | custom(L1,d16) | 4e+09 | 5e+09 | 5e+09 | 1.000 |"]:
        assert heading in md
    members = md.split("## Members")[1].split("\n## ")[0]  # one row per size, both families in it
    loss = {(m["family"], m["name"]): m["ppl"]["loss"] for m in report["members"]}
    expected = []
    for m in report["members"][:2]:
        p, i = loss["progressive", m["name"]], loss["independent", m["name"]]
        expected.append(["| " + m["name"], f"{m['params']:,}", f"{p:.4f}", f"{i:.4f}", f"{p - i:+.4f}"])
    assert [line.split(" | ")[:5] for line in members.splitlines() if "custom(L1" in line] == expected
    for png in ["loss_vs_flops.png", "kl_pairs.png", "accuracy_vs_flops.png"]:
        assert (family.out / png).read_bytes()[:4] == b"\x89PNG"
    # progress on stderr as each step starts; the end says where the report is and the verdict
    assert "progressive custom(L1,d16): hellaswag, 3 items" in proc.stderr
    assert "independent custom(L1,d8) -> custom(L1,d16): KL divergence" in proc.stderr
    assert f"report: {family.out / 'report.md'}" in proc.stdout and "saved 40.0 %" in proc.stdout


def test_missing_checkpoint(family, capsys, tmp_path):
    err = cli_error(capsys, ["--ckpt", str(tmp_path / "nope.pt"), "--out", str(family.out), "--tasks", "ppl",
                             "--val-data", str(family.val)])
    assert "does not exist" in err


def test_missing_plan(family, capsys, tmp_path):
    err = cli_error(capsys, ["--ckpt", str(family.prog[0]), "--out", str(family.out), "--tasks", "ppl",
                             "--val-data", str(family.val), "--plan", str(tmp_path / "plan_missing.json")])
    assert "--plan" in err and "flops.py" in err


def test_unknown_task(family, capsys):
    err = cli_error(capsys, ["--ckpt", str(family.prog[0]), "--out", str(family.out), "--tasks", "ppl,mmlu"])
    assert "unknown task 'mmlu'" in err


def test_tokenizer_mismatch_between_checkpoints(family, capsys, tmp_path):
    gpt2 = save_ckpt(tmp_path / "gpt2.pt", tiny_gpt(tokenizer="gpt2"))
    err = cli_error(capsys, ["--ckpt", str(family.prog[0]), str(gpt2), "--out", str(family.out),
                             "--tasks", "lambada", "--data-dir", str(family.tasks)])
    assert "tokenizer mismatch" in err


def test_tokenizer_mismatch_with_data(family, capsys, tmp_path):
    val = write_val(tmp_path / "gpt2data", np.arange(1000), tokenizer="gpt2")
    err = cli_error(capsys, ["--ckpt", str(family.prog[0]), "--out", str(family.out), "--tasks", "ppl",
                             "--val-data", str(val)])
    assert "tokenizer mismatch" in err and "--val_data" in err


def test_val_data_required_for_ppl(family, capsys):
    err = cli_error(capsys, ["--ckpt", str(family.prog[0]), "--out", str(family.out), "--tasks", "kl"])
    assert "--val_data" in err


# ---------------------------------------------------------------------------------------------
# The verdict, chance levels, plot data, seeds combined, member order

def small_report(family, *extra) -> dict:
    """evaluate.py in process on the tiny families: ppl, two tasks and KL (a few seconds)."""
    ev.main(["--ckpt", *map(str, family.prog), "--baseline", *map(str, family.base), "--val-data", str(family.val),
             "--data-dir", str(family.tasks), "--out", str(family.out), "--tasks", "ppl,lambada,arc_easy,kl",
             "--limit", "4", "--val-tokens", "512", "--plan", str(family.plan), "--device", "cpu", *extra])
    return json.loads((family.out / "report.json").read_text())


@pytest.mark.fast
def test_verdict_names_the_saving_each_delta_and_one_seed(family):
    report = small_report(family)
    loss = {(m["family"], m["name"]): m["ppl"]["loss"] for m in report["members"]}
    verdict = report["verdict"]
    assert "the progressive family saved 40.0 % (planned 50.0 %)" in verdict
    for name in ("custom(L1,d8)", "custom(L1,d16)"):
        delta = loss["progressive", name] - loss["independent", name]
        better = "progressive better" if delta < 0 else "independent better"
        assert f"{name} {delta:+.3f} ({better})" in verdict
    assert "1 seed" in verdict and "chance" in verdict
    assert "LAMBADA" in verdict  # an untrained model never completes a word: at chance, said so
    md = (family.out / "report.md").read_text()
    assert md.index("## Verdict") < md.index("## Members") and verdict.split(". ")[0] in md


def test_random_model_on_a_four_choice_task_is_flagged_at_chance(tmp_path):
    """Each question four times, the gold answer once in each position: whatever a model picks, a
    model that does not know the answers is right exactly once in four."""
    rng = np.random.default_rng()
    questions = [("Question: " + random_text(rng, 4), [random_text(rng, 3) for _ in range(4)]) for _ in range(10)]
    write_jsonl(tmp_path / zs.LOCAL_FILES["arc_easy"], [{"query": q, "choices": c, "gold": g}
                                                        for q, c in questions for g in range(4)])
    items = zs.load_items("arc_easy", tmp_path, None)
    assert zs.chance_level("arc_easy", items) == 0.25 and zs.chance_level("lambada", items) == 0.0
    chance = {"arc_easy": 0.25}
    known = zs.load_items("arc_easy", write_task_files(tmp_path / "known", rng, n=40), None)
    summaries = {}
    for name, model, items in [("random", tiny_gpt(), items), ("oracle", scripted_lm(items_with_gold(known)), known)]:
        metrics = zs.evaluate_task(model, "arc_easy", items, requests_of(items), batch_size=8)
        row = {"params": 1, "tasks": {"arc_easy": metrics}, "average": metrics["acc"], "flops_total": None}
        summaries[name] = rp.member_summary([row], chance, [(None, None)])
    noise = math.sqrt(0.25 * 0.75 / 40)  # binomial standard error of guessing on 40 items
    assert summaries["random"]["tasks"]["arc_easy"]["acc"]["mean"] == 0.25
    assert summaries["random"]["tasks"]["arc_easy"]["vs_chance"] == summaries["random"]["average_vs_chance"] == "within"
    assert summaries["random"]["tasks"]["arc_easy"]["chance_stderr"] == pytest.approx(noise)
    assert summaries["oracle"]["tasks"]["arc_easy"]["acc"]["mean"] == 1.0
    assert summaries["oracle"]["average_vs_chance"] == "above"
    summary = {"chance": chance, "members": [{"name": n, "progressive": s, "independent": None}
                                             for n, s in summaries.items()]}
    verdict = rp.zero_shot_verdict(summary)
    assert "(chance 25.0): progressive random 25.0, oracle 100.0." in verdict
    assert "Above chance by more than 2 standard errors: progressive oracle (within noise of it: progressive random)" \
        in verdict
    summary["members"].pop()  # the random model alone
    assert "No member is above chance by more than 2 standard errors (within noise of it: every member)" \
        in rp.zero_shot_verdict(summary)


def test_loss_plot_data_has_only_positive_flops_and_a_range_from_the_data(family):
    report = small_report(family, "--tasks", "ppl")
    for m in report["members"]:  # training logs as train.py writes them: step 0 first, at the stage's start
        start = 1e9 if (m["family"], m["name"]) == ("progressive", "custom(L1,d16)") else 0.0
        steps = np.linspace(start, m["flops_total"], 11)
        m["history"] = [{"step": 0, "flops_total": start, "val_loss": 5.55 if start == 0 else 3.4}] + \
            [{"step": i, "flops_total": f, "val_loss": 4.0 - i / 10} for i, f in enumerate(steps[1:], 1)]
        m["history_source"] = f"{m['family']}/{m['name']}/metrics.jsonl"
        m["ppl"]["loss"] = 3.0 + np.random.default_rng().uniform(-0.05, 0.05)
    data = rp.loss_plot_data([report], rp.summarize([report]))
    xs = [x for c in data["curves"] for x in c["x"]] + [p["x"] for p in data["points"]]
    assert len(xs) == 4 * 10 + 1 + 4 and min(xs) > 0  # step 0 at FLOPs 0 left out: a log axis cannot place it
    assert [(c["family"], c["label"]) for c in data["curves"]] == \
        [(f, n) for f in rp.KINDS for n in ("custom(L1,d8)", "custom(L1,d16)")]  # named curves
    low, high = data["ylim"]
    assert all(low < p["y"] < high for p in data["points"])
    assert high < 5.55  # the first steps' loss does not stretch the axis
    assert data["growth"] == [1e9]  # the progressive member grown into the next


def test_combine_seeds_mean_and_std(family, tmp_path):
    report = small_report(family)
    rng = np.random.default_rng()
    paths, reports = [], []
    for seed in (1, 2, 3):  # the same run with other numbers, as other seeds would give
        r = json.loads(json.dumps(report))
        r["settings"]["train_seed"] = seed
        for m in r["members"]:
            m["ppl"]["loss"] = float(rng.uniform(2, 3))
            m["tasks"]["arc_easy"]["acc"] = float(rng.choice([0.0, 0.25, 0.5, 0.75]))
        for p in r["pairs"]:
            p["kl"]["kl_large_small"] = float(rng.uniform(0, 1))
        paths.append(tmp_path / f"seed_{seed}" / "report.json")
        paths[-1].parent.mkdir()
        paths[-1].write_text(json.dumps(r))
        reports.append(r)
    ev.main(["--combine", *map(str, paths), "--out", str(tmp_path / "combined")])
    combined = json.loads((tmp_path / "combined" / "report.json").read_text())
    by_name = {m["name"]: m for m in combined["summary"]["members"]}
    for name in ("custom(L1,d8)", "custom(L1,d16)"):
        values = {f: [next(m["ppl"]["loss"] for m in r["members"] if (m["family"], m["name"]) == (f, name))
                      for r in reports] for f in rp.KINDS}
        got = by_name[name]
        assert got["progressive"]["loss"]["mean"] == pytest.approx(statistics.mean(values["progressive"]))
        assert got["independent"]["loss"]["std"] == pytest.approx(statistics.stdev(values["independent"]))
        deltas = [p - i for p, i in zip(values["progressive"], values["independent"])]  # seed by seed
        assert got["delta_loss"]["mean"] == pytest.approx(statistics.mean(deltas))
        assert got["delta_loss"]["std"] == pytest.approx(statistics.stdev(deltas))
        accs = [next(m["tasks"]["arc_easy"]["acc"] for m in r["members"] if (m["family"], m["name"]) ==
                     ("independent", name)) for r in reports]
        assert got["independent"]["tasks"]["arc_easy"]["acc"]["mean"] == pytest.approx(statistics.mean(accs))
    kl = [r["pairs"][1]["kl"]["kl_large_small"] for r in reports]
    pair = combined["summary"]["pairs"][0]
    assert pair["independent"]["kl_large_small"]["std"] == pytest.approx(statistics.stdev(kl))
    assert "3 seeds (1, 2, 3)" in combined["verdict"] and "saved 40.0 %" in combined["verdict"]
    md = (tmp_path / "combined" / "report.md").read_text()
    d16 = by_name["custom(L1,d16)"]["progressive"]["loss"]
    assert f"{d16['mean']:.4f} ± {d16['std']:.4f}" in md.split("## Members")[1].split("\n## ")[0]


def test_combine_refuses_reports_of_other_runs(family, tmp_path, capsys):
    report = small_report(family)
    other_plan = json.loads(json.dumps(report))
    other_plan["flops"]["planned"]["saving"] = 0.3
    other_members = json.loads(json.dumps(report))
    other_members["members"][0]["name"] = "20k"
    paths = []
    for i, r in enumerate([report, other_plan, other_members]):
        paths.append(tmp_path / f"r{i}.json")
        paths[-1].write_text(json.dumps(r))
    out = ["--out", str(tmp_path / "combined")]
    assert "planned FLOPs differ" in cli_error(capsys, ["--combine", str(paths[0]), str(paths[1]), *out])
    err = cli_error(capsys, ["--combine", str(paths[0]), str(paths[2]), *out])
    assert "not seeds of one family and plan" in err and "members differ" in err
    assert "twice" in cli_error(capsys, ["--combine", str(paths[0]), str(paths[0]), *out])
    assert "--combine takes" in cli_error(capsys, ["--combine", str(paths[0]), "--ckpt", str(family.prog[0]), *out])
    assert not (tmp_path / "combined").exists()


def test_members_given_largest_first_are_evaluated_smallest_first(family, capsys):
    ev.main(["--ckpt", *map(str, family.prog[::-1]), "--baseline", *map(str, family.base[::-1]),
             "--val-data", str(family.val), "--out", str(family.out), "--tasks", "ppl,kl", "--val-tokens", "256"])
    report = json.loads((family.out / "report.json").read_text())
    assert [m["name"] for m in report["members"]] == ["custom(L1,d8)", "custom(L1,d16)"] * 2
    assert [(p["small"], p["large"]) for p in report["pairs"]] == [("custom(L1,d8)", "custom(L1,d16)")] * 2
    assert abs(report["pairs"][0]["kl"]["kl_large_small"]) < 1e-6  # the grown member beside its own source
    assert any("--ckpt did not list the members smallest to largest" in n for n in report["notes"])
    err = cli_error(capsys, ["--ckpt", str(family.prog[0]), str(family.prog[0]), "--out", str(family.out),
                             "--tasks", "ppl", "--val-data", str(family.val)])
    assert "two checkpoints of size custom(L1,d8)" in err
