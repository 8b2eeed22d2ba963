"""
Evaluate a model family the way the paper judges one: validation perplexity and bits per byte,
seven zero-shot tasks scored as lm-evaluation-harness scores them, the KL divergence between
adjacent members and how often a smaller member's speculative drafts are accepted by the next
larger one (§5.3). Writes report.md, report.json and PNG plots into --out.

    python evaluate.py --ckpt prog/ckpt_20k.pt prog/ckpt_50k.pt prog/ckpt_120k.pt prog/ckpt_250k.pt \
        --baseline indep/ckpt_20k.pt indep/ckpt_50k.pt indep/ckpt_120k.pt indep/ckpt_250k.pt \
        --val_data data/openstax_bytes --plan runs/tiny/plan.json --out report --limit 500

--ckpt is the progressive family, --baseline the independently trained one (optional); each is
evaluated from its smallest member to its largest. report.md opens with the verdict: the FLOPs the
progressive family saved, the progressive - independent validation loss of each member, the seed
count, and the zero-shot accuracies against chance. The reports of several seeds of one family and
plan combine into one, with mean +- standard deviation over the seeds:

    python evaluate.py --combine runs/tiny/seed_*/report/report.json --out runs/tiny/report

The zero-shot tasks and their scoring are in zeroshot.py; the summary over seeds, the verdict,
report.md's tables and the plots in report.py.

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
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from util import ArgumentParser, UserError, check_args, check_device, pick_device, read_jsonl, run_cli  # first: see util.py
from zeroshot import DEFAULT_EVAL_DIR, ZERO_SHOT  # light: zeroshot.py loads torch only to score

TASKS = ["ppl", *ZERO_SHOT, "kl", "spec"]


def positive_int(s: str) -> int:
    if not s.isdigit() or int(s) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}")
    return int(s)


def parse_args(argv=None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", nargs="+", default=[],
                   help="progressive family members (evaluated smallest to largest, whatever the order)")
    p.add_argument("--baseline", nargs="*", default=[],
                   help="independently trained members, the comparison family (smallest to largest)")
    p.add_argument("--combine", nargs="+", metavar="REPORT_JSON",
                   help="instead of evaluating: combine the report.json of each seed of one family and plan "
                        "into one report (mean ± standard deviation over seeds) in --out")
    p.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated subset of {','.join(TASKS)}")
    p.add_argument("--out", required=True, help="folder for report.md, report.json and the plots")
    p.add_argument("--data_dir", default=str(DEFAULT_EVAL_DIR) if DEFAULT_EVAL_DIR.is_dir() else None,
                   help="folder of local zero-shot task files in the formats of ../shared/data/eval "
                        "(default: that folder if it exists, else download with `datasets`; "
                        "'' forces the download)")
    p.add_argument("--val_data", help="prepared data folder (data/prepare.py) whose val split ppl, kl "
                                      "and spec use; required for those tasks")
    p.add_argument("--val_tokens", type=positive_int, default=65536,
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
    p.add_argument("--spec_k", type=positive_int, default=4,
                   help="tokens the smaller member drafts per round")
    p.add_argument("--spec_prompts", type=positive_int, default=8,
                   help="prompts (starts of validation windows) for the speculative-decoding check")
    p.add_argument("--spec_tokens", type=positive_int, default=64, help="new tokens generated per prompt")
    p.add_argument("--seed", type=int, default=0, help="seed of the speculative sampling")
    args = p.parse_args(argv)
    check_device(args.device)
    return args


check_args(__name__, parse_args)  # --help and usage errors before torch loads
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from tqdm import tqdm  # noqa: E402

import checkpoint  # noqa: E402
import sample  # noqa: E402
from data import open_split, val_windows  # noqa: E402
from expand import twins  # noqa: E402
from model import GPTConfig, count_params  # noqa: E402
from report import KINDS, combine, write_report  # noqa: E402
from tokenizer import get_tokenizer  # noqa: E402
from zeroshot import chance_level, encode_pair, evaluate_task, load_items  # noqa: E402

NEEDS_VAL = {"ppl", "kl", "spec"}
SPEC_PROMPT_TOKENS = 64  # prompt length for speculative decoding, cut from the validation windows


# ---------------------------------------------------------------------------------------------
# Members: the checkpoints of a family, read without their weights

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
        ckpt = checkpoint.load(p, mmap=True, verify=False, model=False, optimizer=False)  # config/meta only
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
    ckpt = checkpoint.load(member.path, mmap=True, optimizer=False)
    return checkpoint.build_model(ckpt, device, use_kernels=False).eval()  # eager PyTorch ops


def check_tokenizers(members: list[Member], data_meta: dict | None):
    first = members[0]
    for m in members[1:]:
        if (m.cfg.tokenizer, m.cfg.vocab_size) != (first.cfg.tokenizer, first.cfg.vocab_size):
            raise UserError(f"tokenizer mismatch: {first.path} uses {first.cfg.tokenizer} (vocab "
                            f"{first.cfg.vocab_size}) but {m.path} uses {m.cfg.tokenizer} (vocab "
                            f"{m.cfg.vocab_size}); evaluate models of one tokenizer together")
    if data_meta is not None and data_meta.get("tokenizer") != first.cfg.tokenizer:
        raise UserError(f"tokenizer mismatch: --val_data is tokenized with {data_meta.get('tokenizer')} "
                        f"but the checkpoints use {first.cfg.tokenizer}; prepare it with their tokenizer")


def read_history(member: Member) -> tuple[str | None, list[dict]]:
    """(source, eval lines {step, tokens, flops_total, val_loss, ...}) of the member's training:
    the trainer's metrics.jsonl (meta["metrics"], or beside the checkpoint), else the log kept in
    the checkpoint; (None, []) when there is neither."""
    files = [Path(c) for c in (member.meta.get("metrics"), member.path.parent / "metrics.jsonl")
             if c and Path(c).is_file()]
    if files:
        source, rows = str(files[0].resolve()), read_jsonl(files[0])
    elif member.train_history:
        source, rows = f"{member.path} (history in the checkpoint)", member.train_history
    else:
        return None, []
    return source, [r for r in rows if isinstance(r, dict) and r.get("val_loss") is not None
                    and r.get("flops_total") is not None]


# ---------------------------------------------------------------------------------------------
# Validation windows: perplexity, bits per byte, KL between members

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
    """Mean per-token KL between the next-token distributions of two members on the same tokens,
    and each member's loss there (KL(L||S) minus the loss gap is what is left beyond quality)."""
    device = next(large.parameters()).device
    forward = reverse = nll_small = nll_large = 0.0
    n = 0
    for x, y in window_batches(windows, batch_size, device, "kl"):
        logq = F.log_softmax(small(x)[0].float(), dim=-1)
        logp = F.log_softmax(large(x)[0].float(), dim=-1)
        forward += kl_divergence(logp, logq).sum().item()
        reverse += kl_divergence(logq, logp).sum().item()
        nll_small -= logq.gather(-1, y[..., None]).sum().item()
        nll_large -= logp.gather(-1, y[..., None]).sum().item()
        n += x.numel()
    return {"kl_large_small": forward / n, "kl_small_large": reverse / n, "loss_small": nll_small / n,
            "loss_large": nll_large / n, "tokens": n}


# ---------------------------------------------------------------------------------------------
# Speculative decoding: the smaller member drafts, the larger verifies

@torch.inference_mode()
def speculative_acceptance(draft, target, prompts: torch.Tensor, n_tokens: int, k: int,
                           greedy: bool, seed: int) -> dict:
    """Acceptance of sample.py's speculative sampling at temperature 1 (rejection sampling), or
    greedy (a draft is kept iff it is the target's argmax)."""
    return sample.speculative_acceptance(draft, target, prompts, n_tokens, k, 0.0 if greedy else 1.0, seed)


# ---------------------------------------------------------------------------------------------
# Evaluating a member, an adjacent pair, a family

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


# ---------------------------------------------------------------------------------------------
# FLOPs: planned (flops.py --json) and spent (the checkpoints' flops_total)

def read_plan(path: str | None) -> dict | None:
    """The family plan that flops.py --json writes (what each stage was meant to cost), if given."""
    if path is None:
        return None
    if not Path(path).is_file():
        raise UserError(f"--plan {path} does not exist; write it with `python flops.py --json {path}`")
    try:
        plan = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"--plan {path} is not valid JSON ({e.msg}); write it again with flops.py") from e
    keys = ("progressive", "independent", "progressive_flops", "independent_flops", "saving")
    if not isinstance(plan, dict) or any(k not in plan for k in keys) or \
            not all(isinstance(s, dict) and "size" in s for k in keys[:2] for s in plan[k]):
        raise UserError(f"--plan {path} is not a plan of flops.py --json (it lacks {', '.join(keys)} or their "
                        "stages); write it again with flops.py")
    return plan


def planned_flops(plan: dict, family: str, size: str) -> float | None:
    """The planned FLOPs of the family up to and including this member (flops.py's
    cumulative_flops: the lineage for progressive, the running sum of members for independent)."""
    stage = next((s for s in plan.get(family, []) if s["size"] == size), None)
    return None if stage is None else stage["cumulative_flops"]


def flops_summary(rows: list[dict], plan: dict | None) -> dict:
    """The progressive family costs its largest member's flops_total (which counts every ancestor
    stage); the independent family costs the sum of its members'."""
    spent = {f: [r["flops_total"] for r in rows if r["family"] == f] for f in KINDS}
    known = {f: v for f, v in spent.items() if v and None not in v}
    prog = max(known["progressive"]) if "progressive" in known else None
    indep = sum(known["independent"]) if "independent" in known else None
    saving = 1 - prog / indep if prog is not None and indep else None
    planned = None if plan is None else {"progressive": plan["progressive_flops"],
                                         "independent": plan["independent_flops"], "saving": plan["saving"]}
    return {"progressive": prog, "independent": indep, "saving": saving, "planned": planned}


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
    return EvalInputs(set(tasks), args.batch_size, windows, tok.byte_lengths(), wikitext, items,
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
            raise UserError("--val_data is required for ppl, kl and spec (a folder prepared by "
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
