"""
Generate text with a member of the family, or with every member of a family for one prompt.

    python sample.py --ckpt out/ckpt_2b.pt --prompt "The mitochondria is"
    python sample.py --family out/ --prompt "Water boils at" --seed 1

Tokens are printed as they are generated. With --family every member continues the same prompt
from the same random seed, so where the members agree the samples agree: how consistent the
family is becomes visible (the paper measures it as KL divergence, evaluate.py).
"""
import argparse
import codecs
from pathlib import Path

from util import UserError, check_args, pick_device, run_cli  # first: see util.py


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--ckpt", help="checkpoint of one member, e.g. out/ckpt_2b.pt")
    src.add_argument("--family", help="folder of a family's checkpoints (ckpt_<size>.pt): every member "
                                      "continues the prompt, smallest first")
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
    for flag, low in (("num_samples", 1), ("max_new_tokens", 0), ("temperature", 0), ("top_k", 0)):
        if getattr(args, flag) < low:
            raise UserError(f"--{flag} must be >= {low}")
    return args


check_args(__name__, parse_args)  # --help and usage errors before torch loads
import torch  # noqa: E402

from checkpoint import load_model, size_name  # noqa: E402
from model import FAMILIES  # noqa: E402
from tokenizer import get_tokenizer  # noqa: E402


@torch.no_grad()
def generate(model, idx, max_new_tokens, temperature=1.0, top_k=None, generator=None, n_vocab=None):
    """Yield the next token ids, (B,) each step, continuing idx (B, T).

    temperature 0 is greedy (argmax); top_k keeps only the k most likely tokens; generator makes
    sampling reproducible; ids >= n_vocab (the embedding's padding, never seen in training) are
    never drawn. The context is left-cropped to the model's block_size.
    """
    for _ in range(max_new_tokens):
        logits, _ = model(idx[:, -model.cfg.block_size:])
        logits = logits[:, -1, :n_vocab].float()
        if temperature == 0:
            nxt = logits.argmax(-1)
        else:
            logits = logits / temperature
            if top_k is not None:
                kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            nxt = torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(1)
        idx = torch.cat([idx, nxt[:, None]], dim=1)
        yield nxt


def token_bytes(tok, i: int) -> bytes:
    """The bytes a token stands for: a GPT-2 token may hold half of a UTF-8 character."""
    if tok.name == "gpt2":
        return tok.enc.decode_single_token_bytes(i)
    return b"<|endoftext|>" if i == tok.eot else bytes([i])


def stream_text(tok, ids):
    """Yield the text of a stream of token ids piece by piece; a UTF-8 character split across
    tokens is held back until complete. The pieces join to tok.decode(ids)."""
    utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for i in ids:
        yield utf8.decode(token_bytes(tok, int(i)))
    yield utf8.decode(b"", final=True)


def family_members(folder) -> list[Path]:
    """ckpt_<size>.pt of each family size found in folder, smallest first (the grown-but-untrained
    ckpt_<size>_expanded.pt are not members)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"--family {folder} is not a folder")
    found = [folder / f"ckpt_{s}.pt" for sizes in FAMILIES.values() for s in sizes]
    found = [p for p in found if p.is_file()]
    if not found:
        raise UserError(f"no family checkpoints (ckpt_<size>.pt) in {folder}")
    return found


def sample(ckpt_path, args, device):
    """Print args.num_samples continuations of args.prompt by one checkpoint, streaming."""
    model, _ = load_model(ckpt_path, device, use_kernels=False)  # plain PyTorch ops, uncompiled
    tok = get_tokenizer(model.cfg.tokenizer)
    # an empty prompt starts at a document boundary
    prompt = tok.encode(args.prompt) or [tok.eot]
    idx = torch.tensor([prompt], dtype=torch.long, device=device)
    generator = torch.Generator(device=device)
    for n in range(args.num_samples):
        print(f"--- {size_name(model.cfg)} ({Path(ckpt_path).name}), sample {n + 1} ---")
        generator.manual_seed(args.seed + n)  # sample n draws the same random numbers in every member
        new = generate(model, idx, args.max_new_tokens, args.temperature, args.top_k, generator,
                       n_vocab=tok.vocab_size)
        print(args.prompt, end="")
        for piece in stream_text(tok, (t.item() for t in new)):
            print(piece, end="", flush=True)
        print("\n")


def main(argv=None):
    args = parse_args(argv)
    args.top_k = args.top_k or None
    device = pick_device(args.device)
    for path in family_members(args.family) if args.family else [args.ckpt]:
        sample(path, args, device)


if __name__ == "__main__":
    run_cli(main)
