"""
The seven zero-shot tasks of the paper's evaluation, loaded and scored as lm-evaluation-harness
does: the task records (local files in the formats of ../shared/data/eval, or the Hugging Face
datasets lm-eval loads), each item as (context, continuation) requests, their log-likelihoods under
a model, and acc / acc_norm / LAMBADA perplexity over the items that fit the model's context.

torch is imported inside score_requests only: evaluate.py lists these tasks in its --help, which
answers before torch loads.
"""
import json
import logging
import math
import re
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np
from tqdm import tqdm

from util import UserError

ZERO_SHOT = ["lambada", "arc_easy", "arc_challenge", "winogrande", "piqa", "openbookqa", "hellaswag"]
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
        raise UserError(f"task file {path} is missing; point --data_dir at a folder with the files "
                        "of ../shared/data/eval")
    try:
        with open(path, encoding="utf-8") as f:
            return list(islice((line for line in f if line.strip()), limit))
    except UnicodeDecodeError as e:
        raise UserError(f"task file {path} is not UTF-8 text; copy it again from ../shared/data/eval") from e


def local_records(task: str, data_dir: Path, limit: int | None) -> list[dict]:
    path = data_dir / LOCAL_FILES[task]
    records = []
    for n, line in enumerate(_lines(path, limit), 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:  # a file cut short, or not JSON lines
            raise UserError(f"task file {path}: record {n} is not JSON ({e.msg}); the file is truncated "
                            "or not a task file; copy it again from ../shared/data/eval") from e
    if task == "piqa":
        labels = _lines(data_dir / PIQA_LABELS, limit)
        if len(labels) != len(records) or not all(label.strip() in ("0", "1") for label in labels):
            raise UserError(f"{data_dir / PIQA_LABELS} does not hold one 0/1 label per record of {path}")
        for r, label in zip(records, labels):
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
                        "--data_dir with local task files such as ../shared/data/eval") from e
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
    items = []
    for n, r in enumerate(records, 1):
        try:
            items.append(ITEM_BUILDERS[task](r))
        except (KeyError, TypeError, ValueError, AttributeError) as e:  # a record of another format
            where = data_dir / LOCAL_FILES[task] if data_dir else f"the Hub's {task}"
            raise UserError(f"task file {where}: record {n} lacks the fields of a {task} item ({type(e).__name__}: "
                            f"{e}); use the files of ../shared/data/eval") from e
    return items


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


def score_requests(model, requests: list[tuple[list[int], list[int]]], batch_size: int,
                   desc: str = "") -> tuple[np.ndarray, np.ndarray]:
    """(summed log-likelihood of each continuation, whether greedy decoding reproduces all of it).

    As lm-eval: the model reads the last block_size + 1 tokens of context + continuation but the last,
    so a context too long loses its start and the continuation stays whole. A continuation longer
    than the context (see fits) is not scored: NaN, and task_metrics leaves its item out.
    Batches are sorted by length and right-padded: with causal attention, padding after a sequence
    cannot change its logits.
    """
    import torch  # here, not at the top: see the module's docstring
    import torch.nn.functional as F

    block = model.cfg.block_size
    device = next(model.parameters()).device
    keep = fits(requests, block)
    rows = {i: ((ctx + cont)[-(block + 1):][:-1], cont) for i, (ctx, cont) in enumerate(requests) if keep[i]}
    order = sorted(rows, key=lambda i: -len(rows[i][0]))
    loglik, greedy = np.full(len(requests), np.nan), np.zeros(len(requests), dtype=bool)
    with torch.inference_mode():
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


def chance_level(task: str, items: list[Item]) -> float:
    """Accuracy of guessing: 1 / choices, averaged over the items; LAMBADA's greedy last word ~0."""
    return 0.0 if task == "lambada" else float(np.mean([1 / len(it.requests) for it in items]))

