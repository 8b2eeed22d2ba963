"""
Evaluate a model family the way the paper judges one: validation perplexity and bits per byte,
seven zero-shot tasks scored as lm-evaluation-harness scores them, the KL divergence between
adjacent members and how often a smaller member's speculative drafts are accepted by the next
larger one (§5.3). Writes report.md, report.json and PNG plots into --out.

    python evaluate.py --ckpt prog/ckpt_20k.pt prog/ckpt_50k.pt prog/ckpt_120k.pt prog/ckpt_250k.pt \
        --baseline indep/ckpt_20k.pt indep/ckpt_50k.pt indep/ckpt_120k.pt indep/ckpt_250k.pt \
        --val-data data/openstax_bytes --plan runs/tiny/plan.json --out report --limit 500

--ckpt is the progressive family from smallest to largest, --baseline the independently trained
one (optional). What the numbers mean:
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
from dataclasses import dataclass
from itertools import islice, zip_longest
from pathlib import Path
from typing import Callable

from util import UserError, atomic_write, pick_device, run_cli, write_json  # first: see util.py
import matplotlib

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

ZERO_SHOT = ["lambada", "arc_easy", "arc_challenge", "winogrande", "piqa", "openbookqa", "hellaswag"]
TASKS = ["ppl", *ZERO_SHOT, "kl", "spec"]
NEEDS_VAL = {"ppl", "kl", "spec"}
FAMILIES = ("progressive", "independent")
SPEC_PROMPT_TOKENS = 64  # prompt length for speculative decoding, cut from the validation windows
DEFAULT_EVAL_DIR = Path(__file__).resolve().parent.parent / "shared" / "data" / "eval"


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

    @property
    def name(self) -> str:
        return self.meta.get("size") or checkpoint.size_name(self.cfg)


def read_members(paths: list[str], family: str) -> list[Member]:
    members = []
    for p in paths:
        ckpt = checkpoint.load(p, mmap=True, verify=False)  # mapped, unchecked: only config/meta are read
        members.append(Member(family, Path(p), ckpt["config"], ckpt.get("meta") or {},
                              (ckpt.get("train") or {}).get("history") or []))
    return members


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


def evaluate_member(model, member: Member, inp: EvalInputs) -> dict:
    source, history = read_history(member)
    row = {"family": member.family, "name": member.name, "path": str(member.path),
           "params": count_params(member.cfg)["total"], "flops_total": member.meta.get("flops_total"),
           "history_source": source, "history": history}
    if "ppl" in inp.tasks:
        row["ppl"] = perplexity(model, inp.windows, inp.byte_lengths, inp.batch_size)
        if inp.wikitext is not None:
            row["wikitext"] = perplexity(model, inp.wikitext, inp.byte_lengths, inp.batch_size)
    row["tasks"] = {t: evaluate_task(model, t, inp.items[t], inp.requests[t], inp.batch_size)
                    for t in ZERO_SHOT if t in inp.tasks}
    accs = [m["acc"] for m in row["tasks"].values()]  # a task's acc is None when no item fit the context
    row["average"] = float(np.mean(accs)) if accs and None not in accs else None
    if member.meta.get("expansion"):  # a grown member: did its copies learn apart from their source?
        row["twins"] = twins({"config": member.cfg, "model": model.state_dict(), "meta": member.meta})
    summary = [f"ppl {row['ppl']['ppl']:.3f}, bpb {row['ppl']['bpb']:.4f}"] if "ppl" in row else []
    summary += [f"{t} {m['acc']:.3f}" for t, m in row["tasks"].items() if m["acc"] is not None]
    print(f"{member.family} {member.name}: {', '.join(summary)}", flush=True)
    return row


def evaluate_pair(small, large, small_member: Member, large_member: Member, inp: EvalInputs) -> dict:
    pair = {"family": small_member.family, "small": small_member.name, "large": large_member.name}
    if "kl" in inp.tasks:
        pair["kl"] = pair_kl(small, large, inp.windows, inp.batch_size)
    if "spec" in inp.tasks:
        prompts = inp.windows[:inp.spec_prompts, :min(SPEC_PROMPT_TOKENS, small.cfg.block_size // 2)]
        pair["spec"] = {mode: speculative_acceptance(small, large, prompts, inp.spec_tokens, inp.spec_k,
                                                     mode == "greedy", inp.seed)
                        for mode in ("sampling", "greedy")}
    summary = [f"KL(L||S) {pair['kl']['kl_large_small']:.4f}"] if "kl" in pair else []
    summary += [f"{mode} acceptance {v['acceptance']:.3f}" for mode, v in pair.get("spec", {}).items()]
    print(f"{pair['family']} {pair['small']} -> {pair['large']}: {', '.join(summary)}", flush=True)
    return pair


def evaluate_family(members: list[Member], inp: EvalInputs, device) -> tuple[list[dict], list[dict]]:
    """Members one at a time; only the previous one stays loaded, for the pair checks."""
    rows, pairs, prev = [], [], None
    for m in members:
        model, _ = checkpoint.load_model(m.path, device, use_kernels=False)  # eager PyTorch ops
        rows.append(evaluate_member(model, m, inp))
        if prev is not None and inp.tasks & {"kl", "spec"}:
            pairs.append(evaluate_pair(prev[0], model, prev[1], m, inp))
        prev = (model, m)
    return rows, pairs


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
    """A member's planned FLOPs, counted as flops_total counts them: cumulative for progressive."""
    stage = next((s for s in plan.get(family, []) if s["size"] == size), None)
    return None if stage is None else stage["cumulative_flops" if family == "progressive" else "flops"]


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


# ---------------------------------------------------------------------------------------------
# Report: report.json, report.md, plots

def fmt(x, spec: str = ".3f") -> str:
    return "–" if x is None else format(x, spec)


def pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def side_by_side(items: list[dict]) -> list[tuple[dict | None, dict | None]]:
    """(progressive, independent) entries matched by position: the same size side by side."""
    return list(zip_longest(*[[x for x in items if x["family"] == f] for f in FAMILIES]))


def member_columns(rows: list[dict]) -> list[tuple[str, Callable]]:
    cols = [("family", lambda r: r["family"]), ("member", lambda r: r["name"]),
            ("params", lambda r: f"{r['params']:,}"), ("FLOPs", lambda r: fmt(r["flops_total"], ".3g"))]
    if any("ppl" in r for r in rows):
        cols += [("val loss", lambda r: fmt(r["ppl"]["loss"], ".4f")),
                 ("ppl", lambda r: fmt(r["ppl"]["ppl"])), ("bpb", lambda r: fmt(r["ppl"]["bpb"], ".4f"))]
    if any("wikitext" in r for r in rows):
        cols.append(("WikiText ppl", lambda r: fmt(r.get("wikitext", {}).get("ppl"))))
    for t in rows[0]["tasks"]:
        cols.append((f"{t} acc" + " / acc_norm" * ("acc_norm" in rows[0]["tasks"][t]),
                     lambda r, t=t: " / ".join(pct(r["tasks"][t].get(k)) for k in ("acc", "acc_norm")
                                               if k in r["tasks"][t])))
        if t == "lambada":
            cols.append(("lambada ppl", lambda r: fmt(r["tasks"]["lambada"]["ppl"], ".4g")))
    if rows[0]["tasks"]:
        cols.append(("avg acc", lambda r: pct(r["average"])))
    return cols


def members_table(rows: list[dict]) -> str:
    cols = member_columns(rows)
    ordered = [r for pair in side_by_side(rows) for r in pair if r is not None]
    return md_table([c[0] for c in cols], [[c[1](r) for c in cols] for r in ordered])


def pairs_table(pairs: list[dict], columns: list[tuple[str, Callable]]) -> str:
    """One row per adjacent pair, each column once per family."""
    header = ["pair"] + [f"{f} {name}" for name, _ in columns for f in FAMILIES]
    rows = []
    for prog, indep in side_by_side(pairs):
        first = prog or indep
        rows.append([f"{first['small']} → {first['large']}"]
                    + [get(p) if p else "–" for _, get in columns for p in (prog, indep)])
    return md_table(header, rows)


def flops_table(rows: list[dict], flops: dict) -> str:
    """FLOPs spent per member and per family, next to the plan when there is one."""
    planned = flops["planned"]
    totals = [{"family": f, "name": "total", "flops_total": flops[f],
               "flops_planned": planned and planned[f]} for f in FAMILIES]
    cols = [("family", lambda r: r["family"]), ("member", lambda r: r["name"]),
            ("FLOPs spent", lambda r: fmt(r["flops_total"], ".4g"))]
    if planned:
        cols += [("planned", lambda r: fmt(r["flops_planned"], ".4g")),
                 ("spent / planned", lambda r: fmt(r["flops_total"] / r["flops_planned"], ".3f")
                  if r["flops_total"] and r["flops_planned"] else "–")]
    saving = f"Saving of the progressive family: {pct(flops['saving'])} %"
    saving += f" (planned: {pct(planned['saving'])} %)" if planned else ""
    return md_table([c[0] for c in cols], [[c[1](r) for c in cols] for r in rows + totals]) + \
        f"\n\n{saving}. The progressive family's cost is its largest member's flops_total, which counts " \
        "every ancestor stage; the independent family's is the sum over its members."


def render_markdown(report: dict, plots: list[str]) -> str:
    s, pairs = report["settings"], report["pairs"]
    parts = ["# Family evaluation",
             f"Tasks: {', '.join(s['tasks'])}. Zero-shot items per task: {s['limit'] or 'all'}. "
             f"Validation: {s['val_windows']} windows of {s['block_size']} tokens. "
             "Accuracies in %, scored as lm-evaluation-harness scores them; "
             "avg acc = mean acc over the tasks.",
             "## Members", members_table(report["members"])]
    if any("kl" in p for p in pairs):
        parts += ["## KL divergence between adjacent members",
                  "KL(L‖S) = KL(p_larger ‖ p_smaller) = "
                  "E_{x~p_larger}[log p_larger(x) − log p_smaller(x)], "
                  "in nats, mean per token over the same validation tokens; KL(S‖L) is the reverse.",
                  pairs_table(pairs, [("KL(L‖S)", lambda p: fmt(p["kl"]["kl_large_small"], ".4f")),
                                      ("KL(S‖L)", lambda p: fmt(p["kl"]["kl_small_large"], ".4f"))])]
    if any("spec" in p for p in pairs):
        parts += ["## Speculative decoding acceptance",
                  f"The smaller member drafts k = {s['spec_k']} tokens, the larger verifies them. "
                  f"Acceptance = accepted / drafted tokens over {s['spec_prompts']} prompts × "
                  f"{s['spec_tokens']} new tokens; sampling at temperature 1 with rejection "
                  "sampling, and greedy (accepted while the argmaxes agree).",
                  pairs_table(pairs, [(mode, lambda p, m=mode: pct(p["spec"][m]["acceptance"]))
                                      for mode in ("sampling", "greedy")])]
    grown = [r for r in report["members"] if r.get("twins")]
    if grown:
        parts += ["## Growth check",
                  "Copies of a unit (residual, head, FFN) that are still within 1e-6 of their source in "
                  "every weight are twins: they get the same updates forever and add no capacity "
                  "(`python expand.py --inspect CKPT` lists them per block).",
                  md_table(["member", "copied units", "twins"],
                           [[f"{r['family']} {r['name']}", str(sum(x["copies"] for x in r["twins"])),
                             str(sum(x["twins"] for x in r["twins"]))] for r in grown])]
    parts += ["## FLOPs", flops_table(report["members"], report["flops"])]
    parts += ["## Plots"] + [f"![{p}]({p})" for p in plots] if plots else []
    parts += ["## Notes", "\n".join(f"- {n}" for n in report["notes"])] if report["notes"] else []
    return "\n\n".join(parts) + "\n"


FAMILY_STYLE = {"progressive": dict(color="tab:blue", marker="o"),
                "independent": dict(color="tab:orange", marker="s")}


def save_figure(fig, path: Path):
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120, bbox_inches="tight"))
    plt.close(fig)


def plot_loss_vs_flops(rows: list[dict], ax) -> bool:
    """Training curves (one per history file) and each member's evaluated loss, growth points dotted."""
    drawn = False
    for family, style in FAMILY_STYLE.items():
        members = [r for r in rows if r["family"] == family]
        curves = {r["history_source"]: r["history"] for r in members if r["history"]}
        for i, hist in enumerate(curves.values()):
            hist = sorted(hist, key=lambda h: h["flops_total"])
            ax.plot([h["flops_total"] for h in hist], [h["val_loss"] for h in hist],
                    color=style["color"], ls="-" if family == "progressive" else "--",
                    label=f"{family} (training)" if i == 0 else None)
        points = [(r["flops_total"], r["ppl"]["loss"]) for r in members if r["flops_total"] and "ppl" in r]
        if points:
            ax.scatter(*zip(*points), **style, zorder=3, label=f"{family} (evaluated)")
        drawn = drawn or bool(curves or points)
    for r in [r for r in rows if r["family"] == "progressive" and r["flops_total"]][:-1]:
        ax.axvline(r["flops_total"], color="tab:blue", ls=":", lw=1)  # growth into the next member
    ax.set(xscale="log", xlabel="cumulative training FLOPs", ylabel="validation loss (nats/token)",
           title="Validation loss vs FLOPs (dotted: growth points)")
    return drawn


def plot_kl(pairs: list[dict], ax) -> bool:
    kl_pairs = [p for p in pairs if "kl" in p]
    labels = list(dict.fromkeys(f"{p['small']}→{p['large']}" for p in kl_pairs))
    width = 0.2
    for j, (family, key) in enumerate((f, k) for f in FAMILIES for k in ("kl_large_small", "kl_small_large")):
        sel = [p for p in kl_pairs if p["family"] == family]
        ax.bar([labels.index(f"{p['small']}→{p['large']}") + (j - 1.5) * width for p in sel],
               [p["kl"][key] for p in sel], width, color=FAMILY_STYLE[family]["color"],
               alpha=1.0 if key == "kl_large_small" else 0.45,
               label=f"{family} " + ("KL(L‖S)" if key == "kl_large_small" else "KL(S‖L)"))
    ax.set_xticks(range(len(labels)), labels)
    ax.set_xlim(-0.5, len(labels) - 0.5)
    ax.set(ylabel="mean KL per token (nats)", title="KL divergence between adjacent members")
    return bool(kl_pairs)


def plot_accuracy_vs_flops(rows: list[dict], ax) -> bool:
    drawn = False
    for family, style in FAMILY_STYLE.items():
        points = [(r["flops_total"], r["average"]) for r in rows
                  if r["family"] == family and r["flops_total"] and r["average"] is not None]
        if points:
            ax.plot(*zip(*sorted(points)), **style, label=family)
            drawn = True
    ax.set(xscale="log", xlabel="training FLOPs (cumulative for progressive)",
           ylabel="average zero-shot accuracy", title="Average accuracy vs FLOPs")
    return drawn


PLOTS = {"loss_vs_flops.png": (plot_loss_vs_flops, "members"), "kl_pairs.png": (plot_kl, "pairs"),
         "accuracy_vs_flops.png": (plot_accuracy_vs_flops, "members")}


def write_plots(out: Path, report: dict) -> list[str]:
    written = []
    for name, (plot, key) in PLOTS.items():
        fig, ax = plt.subplots(figsize=(7, 4.5))
        if plot(report[key], ax):
            ax.legend(fontsize=8)
            save_figure(fig, out / name)
            written.append(name)
        else:
            plt.close(fig)
            report["notes"].append(f"{name} not drawn: nothing to plot (no FLOPs, history, KL or accuracy)")
    return written


def write_report(out: Path, report: dict):
    plots = write_plots(out, report)
    write_json(out / "report.json", report)
    atomic_write(out / "report.md", lambda f: f.write(render_markdown(report, plots)), mode="w")
    print(f"wrote {out / 'report.md'}, {out / 'report.json'} and {len(plots)} plots")


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


def positive_int(s: str) -> int:
    if not s.isdigit() or int(s) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}")
    return int(s)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", nargs="+", required=True, help="progressive family members, smallest to largest")
    p.add_argument("--baseline", nargs="*", default=[],
                   help="independently trained members, smallest to largest (the comparison family)")
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
    p.add_argument("--spec-k", type=positive_int, default=4,
                   help="tokens the smaller member drafts per round")
    p.add_argument("--spec-prompts", type=positive_int, default=8,
                   help="prompts (starts of validation windows) for the speculative-decoding check")
    p.add_argument("--spec-tokens", type=positive_int, default=64, help="new tokens generated per prompt")
    p.add_argument("--seed", type=int, default=0, help="seed of the speculative sampling")
    return p.parse_args(argv)


def settings(args, tasks: list[str], inp: EvalInputs, device) -> dict:
    """How the numbers were made, for the report."""
    return {"tasks": tasks, "limit": args.limit, "data_dir": args.data_dir, "val_data": args.val_data,
            "val_windows": len(inp.windows) if inp.windows is not None else 0,
            "block_size": inp.windows.size(1) - 1 if inp.windows is not None else None,
            "spec_k": args.spec_k, "spec_prompts": args.spec_prompts, "spec_tokens": args.spec_tokens,
            "seed": args.seed, "device": str(device), "plan": args.plan,
            "kl_direction": "kl_large_small = KL(p_larger || p_smaller); kl_small_large = the reverse"}


def main(argv=None):
    args = parse_args(argv)
    tasks = parse_tasks(args.tasks)
    families = {"progressive": read_members(args.ckpt, "progressive"),
                "independent": read_members(args.baseline, "independent")}
    members = families["progressive"] + families["independent"]
    val_tokens, val_meta = None, None
    if NEEDS_VAL & set(tasks):
        if not args.val_data:
            raise UserError("--val-data is required for ppl, kl and spec (a folder prepared by "
                            "data/prepare.py); or leave those out of --tasks")
        val_tokens, val_meta = open_split(args.val_data, "val")
    check_tokenizers(members, val_meta)
    plan = read_plan(args.plan)
    notes = []
    inp = build_inputs(args, tasks, get_tokenizer(members[0].cfg.tokenizer), members, val_tokens, notes)
    device = pick_device(args.device)
    rows, pairs = [], []
    for family, fam_members in families.items():
        r, p = evaluate_family(fam_members, inp, device)
        rows, pairs = rows + r, pairs + p
        if len(fam_members) == 1 and inp.tasks & {"kl", "spec"}:
            notes.append(f"{family} family has one member: no adjacent pair for kl/spec")
    notes += [f"{r['family']} {r['name']}: no loss history (no metrics.jsonl beside {r['path']})"
              for r in rows if r["history_source"] is None]
    for r in rows:
        r["flops_planned"] = planned_flops(plan, r["family"], r["name"]) if plan else None
    report = {"settings": settings(args, tasks, inp, device), "members": rows, "pairs": pairs,
              "flops": flops_summary(rows, plan), "notes": notes}
    write_report(Path(args.out), report)


if __name__ == "__main__":
    run_cli(main)
