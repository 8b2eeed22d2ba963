"""
Generate text with a member of the family, or with every member of a family for one prompt.

    python sample.py --ckpt out/ckpt_2b.pt --prompt "The mitochondria is"
    python sample.py --family out/ --prompt "Water boils at" --seed 1
    python sample.py --ckpt out/ckpt_2b.pt --draft out/ckpt_1b.pt --k 4 --prompt "Water boils at"
    python sample.py --ckpt out/ckpt_2b.pt --draft out/ckpt_1b.pt --bench --temperature 0

Tokens are printed as they are generated. With --family every member continues the same prompt
from the same random seed, so where the members agree the samples agree: how consistent the
family is becomes visible (the paper measures it as KL divergence, evaluate.py).

With --draft a smaller member drafts k tokens at a time and --ckpt verifies them in one forward
pass (speculative sampling): the text is distributed exactly as --ckpt's own samples, and comes
faster when the draft is much cheaper than the target and often agrees with it. --bench measures it.
"""
import argparse
import codecs
import time
from itertools import groupby
from pathlib import Path

from util import ArgumentParser, UserError, check_args, check_device, check_ranges, pick_device, run_cli  # first: see util.py


def parse_args(argv=None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--ckpt", help="checkpoint of one member, e.g. out/ckpt_2b.pt")
    src.add_argument("--family", help="folder of a family's checkpoints (ckpt_<size>.pt): every member "
                                      "continues the prompt, smallest first")
    p.add_argument("--draft", help="checkpoint of a smaller member of the same tokenizer: speculative "
                                   "sampling, the draft proposes and --ckpt verifies")
    p.add_argument("--k", type=int, default=4, help="tokens the draft proposes per round (with --draft)")
    p.add_argument("--bench", action="store_true", help="with --draft: print tokens/s of plain and "
                                                        "speculative generation and the acceptance rate")
    p.add_argument("--prompt", default="", help="text to continue (empty: start a new document)")
    p.add_argument("--num_samples", type=int, default=1, help="continuations per model")
    p.add_argument("--max_new_tokens", type=int, default=200, help="tokens to generate per sample")
    p.add_argument("--temperature", type=float, default=0.8,
                   help="divides the logits; <1 sharper, >1 more random, 0 greedy")
    p.add_argument("--top_k", type=int, default=200, help="sample only among the k most likely tokens "
                                                          "(0: all)")
    p.add_argument("--seed", type=int, default=1337, help="sample n uses seed + n")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    args = p.parse_args(argv)
    check_ranges(args, {"num_samples": "[1, inf)", "max_new_tokens": "[0, inf)", "temperature": "[0, inf)",
                        "top_k": "[0, inf)", "k": "[1, inf)"})
    check_device(args.device)
    if args.draft and args.family:
        raise UserError("--draft drafts for one --ckpt, not a --family")
    if args.bench and not args.draft:
        raise UserError("--bench compares plain and speculative generation: give --ckpt and --draft")
    return args


check_args(__name__, parse_args)  # --help and usage errors before torch loads
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from checkpoint import load_model, size_name  # noqa: E402
from model import FAMILIES, KVCache  # noqa: E402
from tokenizer import get_tokenizer  # noqa: E402


class CachedModel:
    """A model and the KV cache of the tokens it has read: each call runs only the new positions.

    Positions are learned (wpe), so the cached window cannot slide along. It starts on the last
    block_size tokens of the prompt and, when a position would fall outside it, restarts half a
    block further on with one full forward. Which window a position is run in depends on the
    position alone, not on how the tokens were fed: speculative and plain decoding see the same.
    """

    def __init__(self, model, prompt_length: int):
        self.model, self.cache = model, KVCache()
        self.origin = max(0, prompt_length - model.cfg.block_size)  # the first window's start
        self.start = self.read = self.origin  # the cache holds seq[:, start:read]

    def window_start(self, t: int) -> int:
        """The first token of the window that position t is run in."""
        block, half = self.model.cfg.block_size, max(1, self.model.cfg.block_size // 2)
        over = t - (self.origin + block)  # >= 0: t is past the first window
        return self.origin if over < 0 else self.origin + (over // half + 1) * half

    def logits(self, seq: torch.Tensor, n: int) -> torch.Tensor:
        """Float logits (B, n, vocab) at the last n positions of seq (B, T), which must be new:
        seq begins with the tokens read so far, and the positions before them are read too."""
        pieces, t = [], seq.size(1) - n
        for start, run in groupby(range(t, seq.size(1)), key=self.window_start):
            end = t + len(list(run))
            if start != self.start:
                self.cache, self.start, self.read = KVCache(), start, start
            logits, _ = self.model(seq[:, self.read:end], cache=self.cache)
            pieces.append(logits[:, t - end:])
            self.read = t = end
        return torch.cat(pieces, dim=1).float()

    def rewind(self, length: int):
        """Forget every token read after the first `length` (drafts the target rejected)."""
        if length < self.start:  # back before the window restarted: an empty window from there
            self.cache, self.start = KVCache(), length
        else:
            self.cache.crop(length - self.start)
        self.read = length


def next_token_probs(logits: torch.Tensor, temperature: float, top_k: int | None) -> torch.Tensor:
    """The distribution the next token is drawn from: softmax(logits / temperature) over the top_k
    most likely tokens; temperature 0 is greedy, a one-hot on the argmax."""
    if temperature == 0:
        return F.one_hot(logits.argmax(-1), logits.size(-1)).float()
    logits = logits / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return logits.softmax(-1)


def draw(probs: torch.Tensor, generator) -> torch.Tensor:
    """One token id from each distribution of probs (..., vocab)."""
    return torch.multinomial(probs.view(-1, probs.size(-1)), 1, generator=generator).view(probs.shape[:-1])


@torch.no_grad()
def generate(model, idx, max_new_tokens, temperature=1.0, top_k=None, generator=None, n_vocab=None):
    """Yield the next token ids, (B,) each step, continuing idx (B, T).

    temperature 0 is greedy (argmax); top_k keeps only the k most likely tokens; generator makes
    sampling reproducible; ids >= n_vocab (the embedding's padding, never seen in training) are
    never drawn. The context is the prompt's last block_size tokens, moved on by half a block
    whenever it is full (see CachedModel).
    """
    lm = CachedModel(model, idx.size(1))
    for _ in range(max_new_tokens):
        nxt = draw(next_token_probs(lm.logits(idx, 1)[:, 0, :n_vocab], temperature, top_k), generator)
        idx = torch.cat([idx, nxt[:, None]], dim=1)
        yield nxt


# ---------------------------------------------------------------------------------------------
# Speculative sampling (Leviathan et al. 2023; Chen et al. 2023): a small draft model proposes k
# tokens, the large target model scores all of them in one forward pass, and rejection sampling
# keeps a prefix of them such that the output is distributed exactly as the target's samples.

def verify(ps: torch.Tensor, qs: torch.Tensor, drafts: torch.Tensor, generator) -> tuple[int, torch.Tensor]:
    """Accept draft i with probability min(1, p_i(x) / q_i(x)); replace the first rejected one by a
    sample of norm(max(0, p_i - q_i)), or if all k are accepted add a bonus token from p_k.

    ps (k + 1, vocab): the target's distributions at each draft and after the last; qs (k, vocab):
    the draft's, which drafts (k,) were drawn from. Returns (drafts accepted, the token after them).
    Greedy decoding is the one-hot case: a draft is kept iff it is the target's argmax.
    """
    for i, x in enumerate(drafts):
        if torch.rand((), generator=generator, device=ps.device) >= ps[i, x] / qs[i, x]:
            residual = (ps[i] - qs[i]).clamp(min=0)  # all zero only if p = q up to rounding
            return i, draw(residual if residual.sum() > 0 else ps[i], generator)
    return len(drafts), draw(ps[-1], generator)


def speculative_round(draft: CachedModel, target: CachedModel, seq, k, temperature, top_k, generator,
                      n_vocab=None) -> tuple[torch.Tensor, int]:
    """Draft k tokens after seq (1, T), verify them in one forward of the target, and rewind both
    caches to what was kept. Returns (the new tokens, 1 to k + 1 of them; drafts accepted)."""
    probs = lambda lm, x, n: next_token_probs(lm.logits(x, n)[0, :, :n_vocab], temperature, top_k)  # noqa: E731
    x, qs = seq, []
    for _ in range(k):
        qs.append(probs(draft, x, 1)[0])
        x = torch.cat([x, draw(qs[-1], generator).view(1, 1)], dim=1)
    drafts = x[0, seq.size(1):]
    accepted, nxt = verify(probs(target, x, k + 1), torch.stack(qs), drafts, generator)
    kept = seq.size(1) + accepted  # both models have read past seq only what was kept
    target.rewind(kept)
    draft.rewind(min(draft.read, kept))
    return torch.cat([drafts[:accepted], nxt.view(1)]), accepted


@torch.no_grad()
def speculative_generate(draft, target, idx, max_new_tokens, k, temperature=1.0, top_k=None,
                         generator=None, n_vocab=None):
    """Yield (new tokens, drafts accepted, drafted) round by round, continuing idx (1, T); the
    tokens come out distributed as generate(target, ...) would draw them, max_new_tokens in all.
    Arguments as generate's; temperature and top_k shape the draft's and the target's distributions
    alike, so the rejection rule compares the distributions actually sampled from."""
    drafter, verifier = CachedModel(draft, idx.size(1)), CachedModel(target, idx.size(1))
    done = 0
    while done < max_new_tokens:
        n_draft = min(k, max_new_tokens - done)
        new, accepted = speculative_round(drafter, verifier, idx, n_draft, temperature, top_k, generator,
                                          n_vocab)
        new = new[:max_new_tokens - done]  # the bonus token of a last round may be one too many
        idx, done = torch.cat([idx, new[None]], dim=1), done + len(new)
        yield new, accepted, n_draft


def speculative_acceptance(draft, target, prompts, n_tokens: int, k: int, temperature: float,
                           seed: int, top_k=None, n_vocab=None) -> dict:
    """Generate n_tokens after each prompt (rows of prompts) speculatively. acceptance: accepted /
    drafted tokens; tokens_per_round: tokens per forward pass of the target."""
    device = next(target.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    accepted = drafted = rounds = generated = 0
    for prompt in prompts:
        for new, n_accepted, n_drafted in speculative_generate(draft, target, prompt[None].to(device),
                                                               n_tokens, k, temperature, top_k,
                                                               generator, n_vocab):
            accepted, drafted, rounds = accepted + n_accepted, drafted + n_drafted, rounds + 1
            generated += len(new)
    return {"acceptance": accepted / max(drafted, 1), "tokens_per_round": generated / rounds, "rounds": rounds}


def stream_text(tok, ids):
    """Yield the text of a stream of token ids piece by piece; a UTF-8 character split across
    tokens is held back until complete. The pieces join to tok.decode(ids)."""
    utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for i in ids:
        yield utf8.decode(tok.token_bytes(int(i)))
    yield utf8.decode(b"", final=True)


def family_members(folder) -> list[Path]:
    """ckpt_<size>.pt of each family size found in folder, smallest first (the grown-but-untrained
    ckpt_<size>_expanded.pt are not members)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"--family {folder} is not a folder")
    sizes = dict.fromkeys(s for family in FAMILIES.values() for s in family)  # once each (tiny5 repeats tiny)
    found = [folder / f"ckpt_{s}.pt" for s in sizes]
    found = [p for p in found if p.is_file()]
    if not found:
        raise UserError(f"no family checkpoints (ckpt_<size>.pt) in {folder}")
    return found


def load_pair(ckpt_path, draft_path, device):
    """(target, draft) models, plain PyTorch ops; the draft must speak the target's tokenizer."""
    target, _ = load_model(ckpt_path, device, use_kernels=False)
    draft, _ = load_model(draft_path, device, use_kernels=False)
    if draft.cfg.tokenizer != target.cfg.tokenizer:
        raise UserError(f"tokenizer mismatch: the draft {draft_path} uses {draft.cfg.tokenizer} but the "
                        f"target {ckpt_path} uses {target.cfg.tokenizer}; draft with a member of its family")
    return target, draft


def sample(ckpt_path, args, device):
    """Print args.num_samples continuations of args.prompt by one checkpoint, streaming; with
    args.draft speculatively, and how many drafts the target accepted."""
    if args.draft:
        model, draft = load_pair(ckpt_path, args.draft, device)
    else:
        model, _ = load_model(ckpt_path, device, use_kernels=False)  # plain PyTorch ops, uncompiled
    tok = get_tokenizer(model.cfg.tokenizer)
    # an empty prompt starts at a document boundary
    prompt = tok.encode(args.prompt) or [tok.eot]
    idx = torch.tensor([prompt], dtype=torch.long, device=device)
    generator = torch.Generator(device=device)
    for n in range(args.num_samples):
        print(f"--- {size_name(model.cfg)} ({Path(ckpt_path).name}), sample {n + 1} ---")
        generator.manual_seed(args.seed + n)  # sample n draws the same random numbers in every member
        rounds = []  # (accepted, drafted) per speculative round

        def speculative_tokens():
            for tokens, accepted, drafted in speculative_generate(
                    draft, model, idx, args.max_new_tokens, args.k, args.temperature, args.top_k,
                    generator, n_vocab=tok.vocab_size):
                rounds.append((accepted, drafted))
                yield from tokens

        if args.draft:
            new = speculative_tokens()
        else:
            new = generate(model, idx, args.max_new_tokens, args.temperature, args.top_k, generator,
                           n_vocab=tok.vocab_size)
        print(args.prompt, end="")
        for piece in stream_text(tok, (t.item() for t in new)):
            print(piece, end="", flush=True)
        print("\n")
        if rounds:
            accepted, drafted = map(sum, zip(*rounds))
            print(f"[speculative, draft {Path(args.draft).name}: {accepted}/{drafted} drafts accepted, "
                  f"{args.max_new_tokens / len(rounds):.2f} tokens per forward of the target]\n")


@torch.inference_mode()
def bench(draft, target, prompts, n_tokens: int, k: int, temperature: float, top_k=None, seed=0,
          n_vocab=None, repeats=3, clock=time.perf_counter) -> dict:
    """Tokens/s generating n_tokens after each prompt: the target alone (KV-cached), the draft alone,
    and the target drafted for speculatively. The three take turns `repeats` times, so that a
    change of the machine's load hits them alike, and each counts its fastest turn. Same seeds for
    every way. Also the acceptance of the speculative runs. clock: wall time by default;
    time.process_time counts only this process's CPU time (a shared CPU machine)."""
    device = next(target.parameters()).device

    def plain(model):
        generator = torch.Generator(device=device).manual_seed(seed)
        for prompt in prompts:
            for _ in generate(model, prompt[None].to(device), n_tokens, temperature, top_k, generator, n_vocab):
                pass

    ways = {"target": lambda: plain(target), "draft": lambda: plain(draft),
            "speculative": lambda: speculative_acceptance(draft, target, prompts, n_tokens, k, temperature,
                                                          seed, top_k, n_vocab)}
    seconds, returned = {name: float("inf") for name in ways}, {}
    for _ in range(repeats):
        for name, run in ways.items():
            t0 = clock()
            returned[name] = run()
            seconds[name] = min(seconds[name], clock() - t0)
    out = {f"{name}_tokens_per_s": len(prompts) * n_tokens / s for name, s in seconds.items()}
    out["speedup"] = out["speculative_tokens_per_s"] / out["target_tokens_per_s"]
    return out | returned["speculative"]  # its acceptance (the same every turn: same seed)


def print_bench(ckpt_path, args, device):
    target, draft = load_pair(ckpt_path, args.draft, device)
    tok = get_tokenizer(target.cfg.tokenizer)
    prompt = torch.tensor(tok.encode(args.prompt) or [tok.eot])
    r = bench(draft, target, [prompt] * args.num_samples, args.max_new_tokens, args.k, args.temperature,
              args.top_k, args.seed, tok.vocab_size)
    print(f"{size_name(target.cfg)} drafted for by {size_name(draft.cfg)}, k = {args.k}, temperature "
          f"{args.temperature}, {args.num_samples} x {args.max_new_tokens} tokens on {device}:\n"
          f"  plain (KV cache)  {r['target_tokens_per_s']:8.1f} tokens/s   (draft alone "
          f"{r['draft_tokens_per_s']:.1f} tokens/s)\n"
          f"  speculative       {r['speculative_tokens_per_s']:8.1f} tokens/s   speedup {r['speedup']:.2f}x, "
          f"acceptance {r['acceptance']:.1%}, {r['tokens_per_round']:.2f} tokens per forward of the target")


def main(argv=None):
    args = parse_args(argv)
    args.top_k = args.top_k or None
    device = pick_device(args.device)
    if args.bench:
        return print_bench(args.ckpt, args, device)
    for path in family_members(args.family) if args.family else [args.ckpt]:
        sample(path, args, device)


if __name__ == "__main__":
    run_cli(main)
