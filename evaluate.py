"""
Evaluate a model family the way the paper judges one: validation perplexity and bits per byte,
seven zero-shot tasks scored as lm-evaluation-harness scores them, the KL divergence between
adjacent members and how often a smaller member's speculative drafts are accepted by the next
larger one (§5.3). Writes report.md, report.json and PNG plots into --out.

    python evaluate.py --ckpt prog/ckpt_20k.pt prog/ckpt_50k.pt prog/ckpt_120k.pt prog/ckpt_250k.pt \
        --baseline indep/ckpt_20k.pt indep/ckpt_50k.pt indep/ckpt_120k.pt indep/ckpt_250k.pt \
        --val-data data/openstax_bytes --plan runs/tiny/plan.json --out report --limit 500

--ckpt is the progressive family, --baseline the independently trained one (optional); each is
evaluated from its smallest member to its largest. report.md opens with the verdict: the FLOPs the
progressive family saved, the progressive - independent validation loss of each member, the seed
count, and the zero-shot accuracies against chance. The reports of several seeds of one family and
plan combine into one, with mean +- standard deviation over the seeds:

    python evaluate.py --combine runs/tiny/seed_*/report/report.json --out runs/tiny/report

What the numbers mean:
- ppl, bpb: the same evenly spaced windows of the validation split for every member. Bits per byte
  = total nats / ln 2 / UTF-8 bytes of the predicted tokens (a document separator is 0 bytes), so
  byte-level and BPE models can be compared.
- zero-shot: lm-eval's prompts, tokenization and metrics. acc = the choice with the highest summed
  log-likelihood of " " + choice; acc_norm = the same divided by the choice's length in characters.
  An item with a choice longer than the model's context is not scored (lm-eval refuses it), only
  counted (n_excluded_too_long); a context too long loses its start.
- kl: mean per-token KL(p_larger || p_smaller) over the validation windows, and the reverse.
- spec: the smaller member drafts k tokens, the larger verifies them by rejection sampling
  (Leviathan et al. 2023), and greedily; acceptance = accepted drafts / drafted tokens.
"""
import argparse
import json
import logging
import math
import re
import sys
import time
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Callable

from util import UserError, atomic_write, check_args, pick_device, run_cli, write_json  # first: see util.py

ZERO_SHOT = ["lambada", "arc_easy", "arc_challenge", "winogrande", "piqa", "openbookqa", "hellaswag"]
TASKS = ["ppl", *ZERO_SHOT, "kl", "spec"]
DEFAULT_EVAL_DIR = Path(__file__).resolve().parent.parent / "shared" / "data" / "eval"


def positive_int(s: str) -> int:
    if not s.isdigit() or int(s) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}")
    return int(s)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", nargs="+", default=[],
                   help="progressive family members (evaluated smallest to largest, whatever the order)")
    p.add_argument("--baseline", nargs="*", default=[],
                   help="independently trained members, the comparison family (smallest to largest)")
    p.add_argument("--combine", nargs="+", metavar="REPORT_JSON",
                   help="instead of evaluating: combine the report.json of each seed of one family and plan "
                        "into one report (mean ± standard deviation over seeds) in --out")
    p.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated subset of {','.join(TASKS)}")
    p.add_argument("--out", required=True, help="folder for report.md, report.json and the plots")
    p.add_argument("--data-dir", default=str(DEFAULT_EVAL_DIR) if DEFAULT_EVAL_DIR.is_dir() else None,
                   help="folder of local zero-shot task files in the formats of ../shared/data/eval "
                        "(default: that folder if it exists, else download with `datasets`; "
                        "'' forces the download)")
    p.add_argument("--val-data", help="prepared data folder (data/prepare.py) whose val split ppl, kl "
                                      "and spec use; required for those tasks")
    p.add_argument("--val-tokens", type=positive_int, default=65536,
                   help="validation tokens to evaluate (evenly spaced windows of the context length)")
    p.add_argument("--wikitext", help="also WikiText-2 perplexity: a raw text file (wiki.test.raw), or "
                                      "'hf' to download it with `datasets`")
    p.add_argument("--plan", help="the family plan of flops.py --json: planned FLOPs are shown next to "
                                  "those spent")
    p.add_argument("--limit", type=positive_int, help="only the first N items of each zero-shot task")
    p.add_argument("--batch_size", type=positive_int, default=16, help="sequences per forward pass")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="auto: bf16 autocast with TF32 matmuls on CUDA, fp32 on CPU; losses and KL are "
                        "always taken in fp32 from the logits")
    p.add_argument("--spec-k", type=positive_int, default=4,
                   help="tokens the smaller member drafts per round")
    p.add_argument("--spec-prompts", type=positive_int, default=8,
                   help="prompts (starts of validation windows) for the speculative-decoding check")
    p.add_argument("--spec-tokens", type=positive_int, default=64, help="new tokens generated per prompt")
    p.add_argument("--seed", type=int, default=0, help="seed of the speculative sampling")
    return p.parse_args(argv)


check_args(__name__, parse_args)  # --help and usage errors before torch loads
import matplotlib  # noqa: E402

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from tqdm import tqdm  # noqa: E402

import checkpoint  # noqa: E402
import sample  # noqa: E402
from data import open_split, val_windows  # noqa: E402
from expand import twins  # noqa: E402
from model import GPTConfig, count_params  # noqa: E402
from tokenizer import get_tokenizer  # noqa: E402

NEEDS_VAL = {"ppl", "kl", "spec"}
FAMILIES = ("progressive", "independent")
SPEC_PROMPT_TOKENS = 64  # prompt length for speculative decoding, cut from the validation windows


# ---------------------------------------------------------------------------------------------
# Zero-shot task data: local files in the formats of ../shared/data/eval (its README documents the
# fields), or the Hugging Face datasets lm-eval loads, converted to those formats.

LOCAL_FILES = {
    "lambada": "lambada_openai_test.jsonl",
    "arc_easy": "arc_easy_test.jsonl",
    "arc_challenge": "arc_challenge_test.jsonl",
    "winogrande": "winogrande_dev.jsonl",
    "piqa": "piqa_valid.jsonl",
    "openbookqa": "openbookqa_test.jsonl",
    "hellaswag": "hellaswag_val.jsonl",
}
PIQA_LABELS = "piqa_valid-labels.lst"  # line i: gold answer of PIQA item i

HUB_SOURCES = {  # (dataset, config, split) as lm-evaluation-harness loads them
    "lambada": ("EleutherAI/lambada_openai", "default", "test"),
    "arc_easy": ("allenai/ai2_arc", "ARC-Easy", "test"),
    "arc_challenge": ("allenai/ai2_arc", "ARC-Challenge", "test"),
    "winogrande": ("allenai/winogrande", "winogrande_xl", "validation"),
    "piqa": ("baber/piqa", None, "validation"),
    "openbookqa": ("allenai/openbookqa", "main", "test"),
    "hellaswag": ("Rowan/hellaswag", None, "validation"),
}


def _arc_from_hub(r: dict) -> dict:
    return {"query": "Question: " + r["question"], "choices": r["choices"]["text"],
            "gold": r["choices"]["label"].index(r["answerKey"])}


def _openbookqa_from_hub(r: dict) -> dict:
    return {"query": r["question_stem"], "choices": r["choices"]["text"],
            "gold": r["choices"]["label"].index(r["answerKey"].strip())}


def _winogrande_from_hub(r: dict) -> dict:
    blank = r["sentence"].index("_")
    return {"context_options": [r["sentence"][:blank] + o for o in (r["option1"], r["option2"])],
            "continuation": r["sentence"][blank + 1:].strip(), "gold": int(r["answer"]) - 1}


def _hellaswag_from_hub(r: dict) -> dict:
    return {"query": f"{r['activity_label']}: {r['ctx_a']} {r['ctx_b'].capitalize()}",
            "endings": r["endings"], "label": int(r["label"])}


FROM_HUB = {"lambada": dict, "piqa": dict, "arc_easy": _arc_from_hub, "arc_challenge": _arc_from_hub,
            "openbookqa": _openbookqa_from_hub, "winogrande": _winogrande_from_hub,
            "hellaswag": _hellaswag_from_hub}


def _lines(path: Path, limit: int | None) -> list[str]:
    if not path.is_file():
        raise UserError(f"task file {path} is missing; point --data-dir at a folder with the files "
                        "of ../shared/data/eval")
    with open(path, encoding="utf-8") as f:
        return list(islice((line for line in f if line.strip()), limit))


def local_records(task: str, data_dir: Path, limit: int | None) -> list[dict]:
    records = [json.loads(line) for line in _lines(data_dir / LOCAL_FILES[task], limit)]
    if task == "piqa":
        for r, label in zip(records, _lines(data_dir / PIQA_LABELS, limit)):
            r["label"] = int(label)
    return records


def hub_records(task: str, limit: int | None) -> list[dict]:
    try:
        import datasets  # only this online path needs it
        for name in ("datasets", "huggingface_hub"):  # offline, their retry warnings would bury our one line
            logging.getLogger(name).setLevel(logging.ERROR)
        path, name, split = HUB_SOURCES[task]
        ds = datasets.load_dataset(path, name, split=split)
    except Exception as e:  # not installed, or no network
        raise UserError(f"cannot get {task} from the Hugging Face Hub ({type(e).__name__}); pass "
                        "--data-dir with local task files such as ../shared/data/eval") from e
    rows = ds if limit is None else ds.select(range(min(limit, len(ds))))
    return [FROM_HUB[task](dict(r)) for r in rows]


@dataclass
class Item:
    """One zero-shot question: a (context, continuation) request per choice, and the gold index."""
    requests: list[tuple[str, str]]
    gold: int
    choice_chars: list[int] | None = None  # acc_norm divides by these; None: acc only


def multiple_choice(context: str, choices: list[str], gold: int) -> Item:
    # lm-eval joins context and choice with a space and normalizes by the choice's own length
    return Item([(context, " " + c) for c in choices], int(gold), [len(c) for c in choices])


def hellaswag_clean(text: str) -> str:
    """lm-eval's HellaSwag preprocessing: WikiHow's bracket artifacts removed, double spaces collapsed."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def lambada_item(r: dict) -> Item:
    context, word = r["text"].rsplit(" ", 1)  # predict the last word
    return Item([(context, " " + word)], 0)


def arc_item(r: dict) -> Item:
    return multiple_choice(r["query"] + "\nAnswer:", r["choices"], r["gold"])


ITEM_BUILDERS = {
    "lambada": lambada_item,
    "arc_easy": arc_item,
    "arc_challenge": arc_item,
    "openbookqa": lambda r: multiple_choice(r["query"], r["choices"], r["gold"]),
    "piqa": lambda r: multiple_choice(f"Question: {r['goal']}\nAnswer:", [r["sol1"], r["sol2"]], r["label"]),
    # the shared file is cleaned already; cleaning again also drops the few bracketed spans its
    # source dump kept, as lm-eval does with the original text
    "hellaswag": lambda r: multiple_choice(hellaswag_clean(r["query"]),
                                           [hellaswag_clean(e) for e in r["endings"]], r["label"]),
    # partial scoring: the blank filled with each option gives two contexts, the rest is scored
    "winogrande": lambda r: Item([(c, " " + r["continuation"]) for c in r["context_options"]], r["gold"]),
}


def load_items(task: str, data_dir: Path | None, limit: int | None) -> list[Item]:
    records = local_records(task, data_dir, limit) if data_dir else hub_records(task, limit)
    return [ITEM_BUILDERS[task](r) for r in records]


# ---------------------------------------------------------------------------------------------
# Log-likelihood scoring, as lm-evaluation-harness does it

def encode_pair(tok, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of (context, continuation). Trailing spaces of the context move to the continuation,
    and the pair is encoded as one string cut at the context's length, so that BPE tokenizes the
    seam as it would in running text (" world", not " " + "world")."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    if not context:  # nothing to condition on: the document separator stands in
        return [tok.eot], tok.encode(continuation)
    context_ids = tok.encode(context)
    return context_ids, tok.encode(context + continuation)[len(context_ids):]


def fits(requests: list[tuple[list[int], list[int]]], block_size: int) -> np.ndarray:
    """Which requests a model of this context can score whole: the continuation alone must fit (the
    context is cut from the left as needed); lm-eval refuses the others. In the shared eval files,
    items with one too long: 139 of 1,838 PIQA and 1,143 of 10,042 HellaSwag at 256 bytes, none at
    1,024 GPT-2 tokens."""
    return np.array([len(cont) <= block_size for _, cont in requests], dtype=bool)


@torch.inference_mode()
def score_requests(model, requests: list[tuple[list[int], list[int]]], batch_size: int,
                   desc: str = "") -> tuple[np.ndarray, np.ndarray]:
    """(summed log-likelihood of each continuation, whether greedy decoding reproduces all of it).

    As lm-eval: the model reads the last block_size + 1 tokens of context + continuation but the last,
    so a context too long loses its start and the continuation stays whole. A continuation longer
    than the context (see fits) is not scored: NaN, and task_metrics leaves its item out.
    Batches are sorted by length and right-padded: with causal attention, padding after a sequence
    cannot change its logits.
    """
    block = model.cfg.block_size
    device = next(model.parameters()).device
    keep = fits(requests, block)
    rows = {i: ((ctx + cont)[-(block + 1):][:-1], cont) for i, (ctx, cont) in enumerate(requests) if keep[i]}
    order = sorted(rows, key=lambda i: -len(rows[i][0]))
    loglik, greedy = np.full(len(requests), np.nan), np.zeros(len(requests), dtype=bool)
    for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=None, leave=False):
        batch = order[start:start + batch_size]
        x = torch.zeros(len(batch), len(rows[batch[0]][0]), dtype=torch.long)
        for r, i in enumerate(batch):
            x[r, :len(rows[i][0])] = torch.tensor(rows[i][0])
        logits, _ = model(x.to(device))
        for r, i in enumerate(batch):
            inp, cont = rows[i]  # inp holds every predictor of cont: the context is never empty
            logp = F.log_softmax(logits[r, len(inp) - len(cont):len(inp)].float(), dim=-1)
            target = torch.tensor(cont, device=device)
            loglik[i] = logp.gather(-1, target[:, None]).sum().item()
            greedy[i] = bool((logp.argmax(-1) == target).all())
    return loglik, greedy


def choose(loglik: np.ndarray, choice_chars: list[int] | None) -> tuple[int, int | None]:
    """Predictions for acc and acc_norm; np.argmax takes the first of tied choices, as lm-eval does."""
    norm = None if choice_chars is None else int(np.argmax(loglik / np.array(choice_chars)))
    return int(np.argmax(loglik)), norm


def _mean(values) -> float | None:
    return float(np.mean(values)) if len(values) else None


def _accuracy(correct) -> dict:
    c = np.asarray(correct, dtype=float)
    stderr = float(c.std(ddof=1) / math.sqrt(len(c))) if len(c) > 1 else None  # of the mean, as lm-eval
    return {"acc": _mean(c), "acc_stderr": stderr}


def task_metrics(task: str, items: list[Item], loglik: np.ndarray, greedy: np.ndarray) -> dict:
    """Metrics over the items whose every choice was scored whole (n); an item with a choice too
    long for the context (NaN log-likelihood) is left out of every metric and counted apart."""
    sizes = np.array([len(it.requests) for it in items])
    ends = np.cumsum(sizes)
    starts = ends - sizes
    whole = np.array([not np.isnan(loglik[a:b]).any() for a, b in zip(starts, ends)], dtype=bool)
    counts = {"n": int(whole.sum()), "n_excluded_too_long": int((~whole).sum())}
    if task == "lambada":  # one request per item
        # lm-eval's LAMBADA perplexity: exp of minus the mean per-item log-likelihood of the target
        ppl = math.exp(-loglik[whole].mean()) if whole.any() else None
        return {**_accuracy(greedy[whole]), "ppl": ppl, **counts}
    picks = [(choose(loglik[a:b], it.choice_chars), it.gold)
             for it, a, b, ok in zip(items, starts, ends, whole) if ok]
    out = {**_accuracy([acc == gold for (acc, _), gold in picks]), **counts}
    if items[0].choice_chars is not None:
        out["acc_norm"] = _mean([norm == gold for (_, norm), gold in picks])
    return out


def evaluate_task(model, task: str, items: list[Item], requests, batch_size: int) -> dict:
    loglik, greedy = score_requests(model, requests, batch_size, desc=task)
    metrics = task_metrics(task, items, loglik, greedy)
    if metrics["n_excluded_too_long"]:
        metrics["note"] = (f"{task}: {metrics['n_excluded_too_long']} of {len(items)} items not scored: "
                           f"a choice is longer than the model's {model.cfg.block_size}-token context "
                           "(lm-eval refuses such items)")
    return metrics


# ---------------------------------------------------------------------------------------------
# Validation windows: perplexity, bits per byte, KL between members

def token_byte_lengths(tok) -> np.ndarray:
    """UTF-8 bytes each token id stands for. Counted per token, not by decoding text, so that a
    character split across tokens counts its true bytes; the document separator counts none."""
    if tok.name == "bytes":
        lengths = np.ones(tok.vocab_size, dtype=np.int64)
    else:
        lengths = np.array([len(tok.enc.decode_single_token_bytes(i)) for i in range(tok.vocab_size)])
    lengths[tok.eot] = 0
    return lengths


def window_batches(windows: torch.Tensor, batch_size: int, device, desc: str):
    """(inputs, targets) batches of the windows on the device."""
    for i in tqdm(range(0, len(windows), batch_size), desc=desc, disable=None, leave=False):
        w = windows[i:i + batch_size].to(device)
        yield w[:, :-1], w[:, 1:]


@torch.inference_mode()
def perplexity(model, windows: torch.Tensor, byte_lengths: np.ndarray, batch_size: int) -> dict:
    device = next(model.parameters()).device
    nats, n_tokens, n_bytes = 0.0, 0, 0
    for x, y in window_batches(windows, batch_size, device, "ppl"):
        logits, _ = model(x)
        nats += F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum").item()
        n_tokens += y.numel()
        n_bytes += int(byte_lengths[y.cpu().numpy()].sum())
    loss = nats / n_tokens
    return {"loss": loss, "ppl": math.exp(loss), "bpb": nats / math.log(2) / max(n_bytes, 1),
            "tokens": n_tokens, "bytes": n_bytes}


def kl_divergence(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(p || q) = sum_v p(v) (log p(v) - log q(v)) over the last dim, from log-probabilities."""
    return (logp.exp() * (logp - logq)).sum(-1)


@torch.inference_mode()
def pair_kl(small, large, windows: torch.Tensor, batch_size: int) -> dict:
    """Mean per-token KL between the next-token distributions of two members on the same tokens."""
    device = next(large.parameters()).device
    forward = reverse = 0.0
    n = 0
    for x, _ in window_batches(windows, batch_size, device, "kl"):
        logq = F.log_softmax(small(x)[0].float(), dim=-1)
        logp = F.log_softmax(large(x)[0].float(), dim=-1)
        forward += kl_divergence(logp, logq).sum().item()
        reverse += kl_divergence(logq, logp).sum().item()
        n += x.numel()
    return {"kl_large_small": forward / n, "kl_small_large": reverse / n, "tokens": n}


# ---------------------------------------------------------------------------------------------
# Speculative decoding: the smaller member drafts, the larger verifies

@torch.inference_mode()
def speculative_acceptance(draft, target, prompts: torch.Tensor, n_tokens: int, k: int,
                           greedy: bool, seed: int) -> dict:
    """Acceptance of sample.py's speculative sampling at temperature 1 (rejection sampling), or
    greedy (a draft is kept iff it is the target's argmax)."""
    return sample.speculative_acceptance(draft, target, prompts, n_tokens, k, 0.0 if greedy else 1.0, seed)


# ---------------------------------------------------------------------------------------------
# Members and families

@dataclass
class Member:
    family: str  # "progressive" or "independent"
    path: Path
    cfg: GPTConfig
    meta: dict
    train_history: list  # the trainer's own log, kept in the checkpoint (fallback for metrics.jsonl)
    seed: int | None = None  # train.py's --seed, when the checkpoint records it

    @property
    def name(self) -> str:
        return self.meta.get("size") or checkpoint.size_name(self.cfg)

    @property
    def params(self) -> int:
        return count_params(self.cfg)["total"]


def read_members(paths: list[str], family: str) -> list[Member]:
    members = []
    for p in paths:
        ckpt = checkpoint.load(p, mmap=True, verify=False)  # mapped, unchecked: only config/meta are read
        train = ckpt.get("train") or {}
        members.append(Member(family, Path(p), ckpt["config"], ckpt.get("meta") or {},
                              train.get("history") or [], (train.get("args") or {}).get("seed")))
    return members


def size_order(members: list[Member], flag: str) -> tuple[list[Member], str | None]:
    """A family's members smallest to largest by parameter count, whatever order `flag` gave them
    in (adjacent pairs and the progressive − independent rows rely on it); a note when reordered."""
    names = [m.name for m in members]
    twice = next((n for n in names if names.count(n) > 1), None)
    if twice:
        raise UserError(f"{flag} has two checkpoints of size {twice}; give one checkpoint per member")
    ordered = sorted(members, key=lambda m: m.params)
    if all(a is b for a, b in zip(ordered, members)):
        return ordered, None
    return ordered, (f"{flag} did not list the members smallest to largest; they were evaluated as "
                     + " -> ".join(m.name for m in ordered))


def load_weights(member: Member, device) -> torch.nn.Module:
    """The member's GPT in eval mode, built from the memory-mapped checkpoint: only the model's
    tensors are read from disk, not the AdamW moments (twice the weights) that a checkpoint keeps."""
    ckpt = checkpoint.load(member.path, mmap=True)
    return checkpoint.build_model(ckpt, device, use_kernels=False).eval()  # eager PyTorch ops


def check_tokenizers(members: list[Member], data_meta: dict | None):
    first = members[0]
    for m in members[1:]:
        if (m.cfg.tokenizer, m.cfg.vocab_size) != (first.cfg.tokenizer, first.cfg.vocab_size):
            raise UserError(f"tokenizer mismatch: {first.path} uses {first.cfg.tokenizer} (vocab "
                            f"{first.cfg.vocab_size}) but {m.path} uses {m.cfg.tokenizer} (vocab "
                            f"{m.cfg.vocab_size}); evaluate models of one tokenizer together")
    if data_meta is not None and data_meta.get("tokenizer") != first.cfg.tokenizer:
        raise UserError(f"tokenizer mismatch: --val-data is tokenized with {data_meta.get('tokenizer')} "
                        f"but the checkpoints use {first.cfg.tokenizer}; prepare it with their tokenizer")


def _json_lines(path: Path) -> list:
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a last line cut short by a crash
            pass
    return rows


def read_history(member: Member) -> tuple[str | None, list[dict]]:
    """(source, eval lines {step, tokens, flops_total, val_loss, ...}) of the member's training:
    the trainer's metrics.jsonl (meta["metrics"], or beside the checkpoint), else the log kept in
    the checkpoint; (None, []) when there is neither."""
    files = [Path(c) for c in (member.meta.get("metrics"), member.path.parent / "metrics.jsonl")
             if c and Path(c).is_file()]
    if files:
        source, rows = str(files[0].resolve()), _json_lines(files[0])
    elif member.train_history:
        source, rows = f"{member.path} (history in the checkpoint)", member.train_history
    else:
        return None, []
    return source, [r for r in rows if isinstance(r, dict) and r.get("val_loss") is not None
                    and r.get("flops_total") is not None]


@dataclass
class EvalInputs:
    """What every member is evaluated on: built once, the same for both families."""
    tasks: set[str]
    batch_size: int
    windows: torch.Tensor | None  # validation windows (ppl, kl, spec prompts)
    byte_lengths: np.ndarray  # UTF-8 bytes per token id, for bits per byte
    wikitext: torch.Tensor | None
    items: dict  # task -> list[Item]
    requests: dict  # task -> encoded (context ids, continuation ids) of every item's choices
    spec_k: int
    spec_prompts: int
    spec_tokens: int
    seed: int


def progress(what: str):
    """One line on stderr as each step starts, so that a long evaluation is never silent in a log
    (tqdm's bars show only on a terminal)."""
    print(f"[{time.strftime('%H:%M:%S')}] {what}", file=sys.stderr, flush=True)


def evaluate_member(model, member: Member, inp: EvalInputs) -> dict:
    source, history = read_history(member)
    row = {"family": member.family, "name": member.name, "path": str(member.path), "params": member.params,
           "seed": member.seed, "flops_total": member.meta.get("flops_total"),
           "history_source": source, "history": history}
    label = f"{member.family} {member.name}"
    if "ppl" in inp.tasks:
        progress(f"{label}: validation perplexity, {len(inp.windows)} windows")
        row["ppl"] = perplexity(model, inp.windows, inp.byte_lengths, inp.batch_size)
        if inp.wikitext is not None:
            progress(f"{label}: WikiText perplexity, {len(inp.wikitext)} windows")
            row["wikitext"] = perplexity(model, inp.wikitext, inp.byte_lengths, inp.batch_size)
    row["tasks"] = {}
    for t in (t for t in ZERO_SHOT if t in inp.tasks):
        progress(f"{label}: {t}, {len(inp.items[t])} items ({len(inp.requests[t])} continuations)")
        row["tasks"][t] = evaluate_task(model, t, inp.items[t], inp.requests[t], inp.batch_size)
    accs = [m["acc"] for m in row["tasks"].values()]  # a task's acc is None when no item fit the context
    row["average"] = float(np.mean(accs)) if accs and None not in accs else None
    if member.meta.get("expansion"):  # a grown member: did its copies learn apart from their source?
        row["twins"] = twins({"config": member.cfg, "model": model.state_dict(), "meta": member.meta})
    summary = [f"ppl {row['ppl']['ppl']:.3f}, bpb {row['ppl']['bpb']:.4f}"] if "ppl" in row else []
    summary += [f"{t} {m['acc']:.3f}" for t, m in row["tasks"].items() if m["acc"] is not None]
    print(f"{label}: {', '.join(summary)}", flush=True)
    return row


def evaluate_pair(small, large, small_member: Member, large_member: Member, inp: EvalInputs) -> dict:
    pair = {"family": small_member.family, "small": small_member.name, "large": large_member.name}
    label = f"{pair['family']} {pair['small']} -> {pair['large']}"
    if "kl" in inp.tasks:
        progress(f"{label}: KL divergence, {len(inp.windows)} windows")
        pair["kl"] = pair_kl(small, large, inp.windows, inp.batch_size)
    if "spec" in inp.tasks:
        prompts = inp.windows[:inp.spec_prompts, :min(SPEC_PROMPT_TOKENS, small.cfg.block_size // 2)]
        pair["spec"] = {}
        for mode in ("sampling", "greedy"):
            progress(f"{label}: speculative decoding ({mode}), {len(prompts)} prompts x {inp.spec_tokens} tokens")
            pair["spec"][mode] = speculative_acceptance(small, large, prompts, inp.spec_tokens, inp.spec_k,
                                                        mode == "greedy", inp.seed)
    summary = [f"KL(L||S) {pair['kl']['kl_large_small']:.4f}"] if "kl" in pair else []
    summary += [f"{mode} acceptance {v['acceptance']:.3f}" for mode, v in pair.get("spec", {}).items()]
    print(f"{label}: {', '.join(summary)}", flush=True)
    return pair


def evaluate_family(members: list[Member], inp: EvalInputs, device) -> tuple[list[dict], list[dict]]:
    """Members one at a time; only the previous one stays loaded, for the pair checks."""
    rows, pairs, prev = [], [], None
    for m in members:
        progress(f"{m.family} {m.name}: loading {m.path}")
        model = load_weights(m, device)
        rows.append(evaluate_member(model, m, inp))
        if prev is not None and inp.tasks & {"kl", "spec"}:
            pairs.append(evaluate_pair(prev[0], model, prev[1], m, inp))
        prev = (model, m)
    return rows, pairs


def precision_context(precision: str, device: torch.device):
    """bf16 autocast (and TF32 matmuls) on CUDA unless --precision fp32; CPU stays fp32, so the
    tests' numbers are exact. Losses, log-softmaxes and KL are taken in fp32 from the logits."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"), precision


def read_plan(path: str | None) -> dict | None:
    """The family plan that flops.py --json writes (what each stage was meant to cost), if given."""
    if path is None:
        return None
    if not Path(path).is_file():
        raise UserError(f"--plan {path} does not exist; write it with `python flops.py --json {path}`")
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"--plan {path} is not valid JSON ({e.msg}); write it again with flops.py") from e


def planned_flops(plan: dict, family: str, size: str) -> float | None:
    """The planned FLOPs of the family up to and including this member (flops.py's
    cumulative_flops: the lineage for progressive, the running sum of members for independent)."""
    stage = next((s for s in plan.get(family, []) if s["size"] == size), None)
    return None if stage is None else stage["cumulative_flops"]


def flops_summary(rows: list[dict], plan: dict | None) -> dict:
    """The progressive family costs its largest member's flops_total (which counts every ancestor
    stage); the independent family costs the sum of its members'."""
    spent = {f: [r["flops_total"] for r in rows if r["family"] == f] for f in FAMILIES}
    known = {f: v for f, v in spent.items() if v and None not in v}
    prog = max(known["progressive"]) if "progressive" in known else None
    indep = sum(known["independent"]) if "independent" in known else None
    saving = 1 - prog / indep if prog is not None and indep else None
    planned = None if plan is None else {"progressive": plan["progressive_flops"],
                                         "independent": plan["independent_flops"], "saving": plan["saving"]}
    return {"progressive": prog, "independent": indep, "saving": saving, "planned": planned}


def family_flops(rows: list[dict]) -> dict:
    """(family, name) -> (FLOPs of this member's own training, FLOPs of its family up to and
    including it). A progressive member's flops_total already counts its ancestors' stages; an
    independent member's counts itself only. Rows are smallest to largest within a family."""
    out = {}
    for family in FAMILIES:
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


# ---------------------------------------------------------------------------------------------
# Summary over seeds and the verdict. A single report is one seed; --combine pools the reports of
# several seeds of one family and plan. Everything the report shows is built from this summary.

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


def chance_level(task: str, items: list[Item]) -> float:
    """Accuracy of guessing: 1 / choices, averaged over the items; LAMBADA's greedy last word ~0."""
    return 0.0 if task == "lambada" else float(np.mean([1 / len(it.requests) for it in items]))


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
                              for f in FAMILIES}}
        m["params"] = next(iter(fams.values()))[0]["params"]
        if all(f in fams and "ppl" in fams[f][0] for f in FAMILIES):
            m["delta_loss"] = spread(p["ppl"]["loss"] - i["ppl"]["loss"]
                                     for p, i in zip(fams["progressive"], fams["independent"]))
        members.append(m)
    return {"seeds": len(reports), "train_seeds": [r["settings"].get("train_seed") for r in reports],
            "chance": chance, "members": members,
            "pairs": [{"small": s, "large": lg, **{f: pair_summary(fams[f]) if f in fams else None
                                                  for f in FAMILIES}} for (s, lg), fams in pairs.items()],
            "flops": {**{k: spread(r["flops"][k] for r in reports) for k in ("progressive", "independent", "saving")},
                      "planned": reports[0]["flops"]["planned"]}}


def each_member(summary: dict):
    """(family, member summary entry, that family's summary) of every evaluated member."""
    return [(f, m, m[f]) for f in FAMILIES for m in summary["members"] if m[f] is not None]


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
    sizes = {fam: [m["name"] for m in summary["members"] if m[fam]] for fam in FAMILIES}
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
                                           if g == f) for f in FAMILIES if any(g == f for g, _, _ in members))
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


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def members_table(summary: dict) -> str:
    """One row per size, the two families side by side: what a reader compares."""
    def both(label, get):  # the column of each family: "label P", "label I"
        return [(f"{label} {f[0].upper()}", lambda m, f=f: get(m[f]) if m[f] is not None else "–") for f in FAMILIES]

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
    header = ["pair"] + [f"{f} {name}" for name, _ in columns for f in FAMILIES]
    rows = [[f"{p['small']} → {p['large']}"] + [get(p[f]) if p[f] else "–" for _, get in columns for f in FAMILIES]
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
    if summary["chance"] or any(m[f] and m[f]["ppl"] for m in summary["members"] for f in FAMILIES):
        parts += ["## Perplexity and zero-shot tasks",
                  "Means over the seeds (spreads in report.json). " * (summary["seeds"] > 1)
                  + "Chance: 1 / number of choices (LAMBADA: ~0). "
                  "* acc not above chance by more than 2 standard errors of guessing.", details_table(summary)]
    if any(p[f] and "kl_large_small" in p[f] for p in summary["pairs"] for f in FAMILIES):
        parts += ["## KL divergence between adjacent members (lower = more consistent)",
                  "KL(L‖S) = KL(p_larger ‖ p_smaller) = "
                  "E_{x~p_larger}[log p_larger(x) − log p_smaller(x)], "
                  "in nats, mean per token over the same validation tokens; KL(S‖L) is the reverse. "
                  "Lower: the two members predict more alike.",
                  pairs_table(summary, [("KL(L‖S)", lambda p: fmt_spread(p["kl_large_small"], ".4f")),
                                        ("KL(S‖L)", lambda p: fmt_spread(p["kl_small_large"], ".4f"))])]
    if any(p[f] and "greedy" in p[f] for p in summary["pairs"] for f in FAMILIES):
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
        high = max([float(np.percentile(curve_y, 90))] * bool(curve_y) + [p["y"] for p in points])
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
    pairs = [p for p in summary["pairs"] if any(p[f] and "kl_large_small" in p[f] for f in FAMILIES)]
    width = 0.2
    for j, (family, key) in enumerate((f, k) for f in FAMILIES for k in ("kl_large_small", "kl_small_large")):
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


# ---------------------------------------------------------------------------------------------
# Command line

def parse_tasks(spec: str) -> list[str]:
    tasks = [t.strip() for t in spec.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise UserError(f"unknown task {', '.join(map(repr, unknown)) or '(none given)'}; "
                        f"choose from: {','.join(TASKS)}")
    return tasks


def wikitext_windows(source: str, tok, block_size: int, max_tokens: int, notes: list) -> torch.Tensor | None:
    """WikiText-2 test windows from a raw text file, or from the Hub with `--wikitext hf`."""
    if source != "hf":
        if not Path(source).is_file():
            raise UserError(f"--wikitext {source} does not exist; give wiki.test.raw or 'hf'")
        text = Path(source).read_text(encoding="utf-8")
    else:
        try:
            import datasets
            text = "".join(datasets.load_dataset("wikitext", "wikitext-2-raw-v1", split="test")["text"])
        except Exception as e:  # not installed, or no network: the rest of the report still counts
            notes.append(f"WikiText perplexity skipped: cannot download it ({type(e).__name__})")
            return None
    return val_windows(np.array(tok.encode(text)), block_size, max_tokens)


def build_inputs(args, tasks: list[str], tok, members: list[Member], val_tokens, notes: list) -> EvalInputs:
    block = min(m.cfg.block_size for m in members)  # one set of windows that fits every member
    windows = val_windows(val_tokens, block, args.val_tokens) if val_tokens is not None else None
    wikitext = None
    if args.wikitext and "ppl" in tasks:
        wikitext = wikitext_windows(args.wikitext, tok, block, args.val_tokens, notes)
    elif "ppl" in tasks:
        notes.append("WikiText perplexity not computed: no offline copy; "
                     "pass --wikitext FILE or --wikitext hf")
    data_dir = Path(args.data_dir) if args.data_dir else None
    items = {t: load_items(t, data_dir, args.limit) for t in ZERO_SHOT if t in tasks}
    requests = {t: [encode_pair(tok, c, x) for it in its for c, x in it.requests] for t, its in items.items()}
    return EvalInputs(set(tasks), args.batch_size, windows, token_byte_lengths(tok), wikitext, items,
                      requests, args.spec_k, args.spec_prompts, args.spec_tokens, args.seed)


def settings(args, tasks: list[str], inp: EvalInputs, device, precision: str, members: list[Member]) -> dict:
    """How the numbers were made, for the report."""
    seeds = {m.seed for m in members}
    return {"tasks": tasks, "limit": args.limit, "data_dir": args.data_dir, "val_data": args.val_data,
            "val_windows": len(inp.windows) if inp.windows is not None else 0,
            "block_size": inp.windows.size(1) - 1 if inp.windows is not None else None,
            "spec_k": args.spec_k, "spec_prompts": args.spec_prompts, "spec_tokens": args.spec_tokens,
            "seed": args.seed, "device": str(device), "precision": precision, "plan": args.plan,
            "train_seed": seeds.pop() if len(seeds) == 1 else None,
            "chance": {t: chance_level(t, its) for t, its in inp.items.items()},
            "kl_direction": "kl_large_small = KL(p_larger || p_smaller); kl_small_large = the reverse"}


def main(argv=None):
    args = parse_args(argv)
    if args.combine:
        if args.ckpt or args.baseline:
            raise UserError("--combine takes report.json files, not --ckpt/--baseline; run one or the other")
        return combine(args.combine, Path(args.out))
    if not args.ckpt:
        raise UserError("give --ckpt (the progressive family's checkpoints) or --combine (reports of seeds)")
    tasks = parse_tasks(args.tasks)
    given = {"progressive": read_members(args.ckpt, "progressive"),
             "independent": read_members(args.baseline, "independent")}
    members = given["progressive"] + given["independent"]
    val_tokens, val_meta = None, None
    if NEEDS_VAL & set(tasks):
        if not args.val_data:
            raise UserError("--val-data is required for ppl, kl and spec (a folder prepared by "
                            "data/prepare.py); or leave those out of --tasks")
        val_tokens, val_meta = open_split(args.val_data, "val")
    check_tokenizers(members, val_meta)
    families, notes = {}, []
    for (family, fam_members), flag in zip(given.items(), ("--ckpt", "--baseline")):
        families[family], note = size_order(fam_members, flag)
        notes += [note] if note else []
    plan = read_plan(args.plan)
    inp = build_inputs(args, tasks, get_tokenizer(members[0].cfg.tokenizer), members, val_tokens, notes)
    device = pick_device(args.device)
    autocast, precision = precision_context(args.precision, device)
    rows, pairs = [], []
    with autocast:
        for family, fam_members in families.items():
            r, p = evaluate_family(fam_members, inp, device)
            rows, pairs = rows + r, pairs + p
            if len(fam_members) == 1 and inp.tasks & {"kl", "spec"}:
                notes.append(f"{family} family has one member: no adjacent pair for kl/spec")
    notes += sorted({m["note"] for r in rows for m in r["tasks"].values() if "note" in m})  # too-long items
    notes += [f"{r['family']} {r['name']}: no loss history (no metrics.jsonl beside {r['path']})"
              for r in rows if r["history_source"] is None]
    for r in rows:
        r["flops_planned"] = planned_flops(plan, r["family"], r["name"]) if plan else None
    report = {"settings": settings(args, tasks, inp, device, precision, members), "members": rows,
              "pairs": pairs, "flops": flops_summary(rows, plan), "notes": notes}
    write_report(Path(args.out), [report], report)


if __name__ == "__main__":
    run_cli(main)
