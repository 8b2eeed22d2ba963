"""
Export a member of the family to a Hugging Face transformers folder, loadable without custom code:

    python export_hf.py --ckpt out/ckpt_2b.pt --out hf/2b
    python -c "import transformers as t; m = t.AutoModelForCausalLM.from_pretrained('hf/2b')"

The folder holds config.json, generation_config.json, model.safetensors and the tokenizer, so
lm-evaluation-harness, vLLM or the Hub take it as is (lm_eval --model hf --model_args pretrained=hf/2b).

Why GPT-2 (GPT2LMHeadModel): our model IS the GPT-2 architecture, so every tensor maps 1:1 and the
logits agree to float rounding. Learned positions, pre-LN LayerNorm with biases, tanh-GELU
("gelu_new") MLP with biases, a fused qkv with rows [q heads | k heads | v heads] (GPT-2 splits
c_attn's output the same way), scale 1/sqrt(head_dim). The untied head is GPT-2's
tie_word_embeddings=False. GPT-NeoX (rotary, interleaved per-head qkv) and Llama (RMSNorm, SwiGLU,
rotary, no biases) would each need our weights changed, and change the function.

Tokenizers: GPT-2-vocab members get the GPT-2 BPE (the model's padded vocab rows past 50,257 are
never produced by it). Byte-level members get a byte-level BPE with no merges whose ids are the raw
UTF-8 bytes, with 0xFF (never in UTF-8) as <|endoftext|> — exactly tokenizer.py's ByteTokenizer.

transformers is imported here only: the rest of the project runs without it.
"""
import argparse
import shutil
import tempfile
from pathlib import Path

from util import UserError, check_args, run_cli  # first: see util.py

SHARED_GPT2 = Path(__file__).resolve().parent.parent / "shared" / "tokenizer" / "gpt2"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="checkpoint of one member, e.g. out/ckpt_2b.pt")
    p.add_argument("--out", required=True, help="folder to write (created; files in it are overwritten)")
    p.add_argument("--tokenizer_dir", default=None,
                   help="folder with GPT-2's encoder.json and vocab.bpe, for GPT-2-vocab models "
                        f"(default: {SHARED_GPT2} if present, else download)")
    return p.parse_args(argv)


check_args(__name__, parse_args)  # --help and usage errors before torch loads
from checkpoint import load  # noqa: E402
from model import GPTConfig  # noqa: E402


def hf_state_dict(sd: dict, cfg: GPTConfig) -> dict:
    """Our state dict under GPT2LMHeadModel's names. GPT-2's Conv1D stores its weight as (in, out),
    the transpose of nn.Linear's (out, in)."""
    out = {"transformer.wte.weight": sd["wte.weight"], "transformer.wpe.weight": sd["wpe.weight"],
           "transformer.ln_f.weight": sd["ln_f.weight"], "transformer.ln_f.bias": sd["ln_f.bias"],
           "lm_head.weight": sd["head.weight"]}
    names = {"ln1": "ln_1", "ln2": "ln_2", "attn.qkv": "attn.c_attn", "attn.proj": "attn.c_proj",
             "mlp.fc": "mlp.c_fc", "mlp.proj": "mlp.c_proj"}
    for i in range(cfg.n_layer):
        for ours, theirs in names.items():
            w, b = sd[f"blocks.{i}.{ours}.weight"], sd[f"blocks.{i}.{ours}.bias"]
            out[f"transformer.h.{i}.{theirs}.weight"] = w if w.dim() == 1 else w.t()
            out[f"transformer.h.{i}.{theirs}.bias"] = b
    # safetensors wants every tensor contiguous, in storage of its own
    return {k: v.contiguous() for k, v in out.items()}


def hf_config(cfg: GPTConfig, eot: int):
    from transformers import GPT2Config
    return GPT2Config(
        vocab_size=cfg.vocab_size, n_positions=cfg.block_size, n_embd=cfg.n_embd,
        n_layer=cfg.n_layer, n_head=cfg.n_head, n_inner=cfg.d_ff, activation_function="gelu_new",
        layer_norm_epsilon=cfg.norm_eps, tie_word_embeddings=False,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,  # we train without dropout
        bos_token_id=eot, eos_token_id=eot, architectures=["GPT2LMHeadModel"])


def gpt2_tokenizer(tokenizer_dir, block_size: int):
    """GPT-2 BPE from a folder with encoder.json and vocab.bpe, or from the Hub when None."""
    from transformers import GPT2TokenizerFast
    if tokenizer_dir is None:
        try:
            return GPT2TokenizerFast.from_pretrained("gpt2", model_max_length=block_size)
        except Exception as e:  # offline: huggingface_hub raises its own error types
            raise UserError(f"cannot download the GPT-2 tokenizer ({type(e).__name__}); pass "
                            "--tokenizer_dir DIR holding encoder.json and vocab.bpe") from e
    src = Path(tokenizer_dir)
    if not (src / "encoder.json").is_file() or not (src / "vocab.bpe").is_file():
        raise UserError(f"--tokenizer_dir {src} must hold encoder.json and vocab.bpe (GPT-2 BPE)")
    # copied under Hugging Face's names, which from_pretrained reads in every transformers version
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(src / "encoder.json", Path(tmp) / "vocab.json")
        shutil.copy(src / "vocab.bpe", Path(tmp) / "merges.txt")
        return GPT2TokenizerFast.from_pretrained(tmp, model_max_length=block_size)


def byte_tokenizer(block_size: int):
    """UTF-8 bytes as a byte-level BPE without merges: token id = byte value, 0xFF = <|endoftext|>.

    Byte-level BPE writes byte b as the printable character bytes_to_unicode()[b] (GPT-2's table);
    with no merges, every byte stays one token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode
    vocab = {ch: b for b, ch in bytes_to_unicode().items() if b != 0xFF}
    vocab["<|endoftext|>"] = 0xFF
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=block_size,
                                   bos_token="<|endoftext|>", eos_token="<|endoftext|>")


def export(ckpt_path, out, tokenizer_dir=None):
    """Write ckpt_path's model and tokenizer to the folder out; returns the model's config."""
    ckpt = load(ckpt_path)
    cfg = ckpt["config"]
    if cfg.tokenizer == "bytes" and tokenizer_dir is not None:
        raise UserError(f"{ckpt_path} is a byte-level model: a GPT-2 tokenizer would feed it wrong ids; "
                        "drop --tokenizer_dir (a byte tokenizer is exported with it)")
    try:
        import torch
        from transformers import GenerationConfig, GPT2LMHeadModel
    except ImportError as e:
        raise UserError(f"export needs Hugging Face transformers ({e}): pip install transformers") from e
    if cfg.tokenizer == "gpt2":
        eot = 50256
        tok = gpt2_tokenizer(tokenizer_dir or (SHARED_GPT2 if SHARED_GPT2.is_dir() else None), cfg.block_size)
    else:
        eot = 0xFF
        tok = byte_tokenizer(cfg.block_size)

    with torch.device("meta"):  # no memory, no random init: the weights come from the checkpoint
        hf = GPT2LMHeadModel(hf_config(cfg, eot))
    hf.load_state_dict(hf_state_dict(ckpt["model"], cfg), strict=True, assign=True)
    hf.generation_config = GenerationConfig(bos_token_id=eot, eos_token_id=eot, pad_token_id=eot)
    try:
        Path(out).mkdir(parents=True, exist_ok=True)
        hf.save_pretrained(out)
        tok.save_pretrained(out)
    except OSError as e:
        raise UserError(f"cannot write {out} ({e.strerror or e}); choose a writable --out") from e
    return cfg


def main(argv=None):
    args = parse_args(argv)
    cfg = export(args.ckpt, args.out, args.tokenizer_dir)
    print(f"wrote {args.out}: GPT2LMHeadModel, {cfg.n_layer} layers, width {cfg.n_embd}, "
          f"{cfg.tokenizer} tokenizer")


if __name__ == "__main__":
    run_cli(main)
