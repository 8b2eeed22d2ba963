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

Llama members (model.py's norm rmsnorm, mlp swiglu, pos rope) export as LlamaForCausalLM, 1:1 too:
qkv's rows [q | k | v] are q_proj, k_proj and v_proj (n_kv_head heads in k and v), mlp.gate, mlp.fc
and mlp.proj are gate_proj, up_proj and down_proj, ln1/ln2/ln_f the RMSNorms, and model.py's RoPE is
transformers' (rotate_half, rope_theta, rope_type "default", or "llama3": Llama 3.1/3.2's
frequency scaling, model.py's rope_factor and its fields). Llama folders import the same way:
SmolLM2's, Llama 3.2's, or any LlamaForCausalLM with RoPE unscaled or scaled as Llama 3.1's (other
rope_types are refused), into a member that expand.py grows; a tied head is untied. Other mixtures
(say LayerNorm with SwiGLU) have no transformers class and are refused.

Tokenizers: GPT-2-vocab members get the GPT-2 BPE (the model's padded vocab rows past 50,257 are
never produced by it). Byte-level members get a byte-level BPE with no merges whose ids are the raw
UTF-8 bytes, with 0xFF (never in UTF-8) as <|endoftext|> — exactly tokenizer.py's ByteTokenizer.

Import, the other way: a transformers GPT-2 (OpenAI's from the Hub, or a folder) becomes a
checkpoint of this project, a member of the gpt2 family (124m, 355m, 774m, 1.5b) that expand.py
grows and train.py --init continues like any other (see import_hf and pad_vocab):

    python export_hf.py --import gpt2 --out ckpt_124m.pt

transformers is imported here only: the rest of the project runs without it.
"""
import argparse
import shutil
import tempfile
from pathlib import Path

from util import ArgumentParser, UserError, check_args, run_cli  # first: see util.py

SHARED_GPT2 = Path(__file__).resolve().parent.parent / "shared" / "tokenizer" / "gpt2"
# the vocabularies of the tokenizer.json tokenizers (tokenizer.py's JSON_TOKENIZERS)
JSON_VOCABS = {49152: "smollm2", 128256: "llama3"}  # SmolLM2's; Llama 3's (3.1, 3.2)


def parse_args(argv=None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--ckpt", help="export: checkpoint of one member, e.g. out/ckpt_2b.pt")
    src.add_argument("--import", dest="import_src", metavar="SRC",
                     help="import instead: a transformers GPT-2 (GPT2LMHeadModel) or Llama "
                          "(LlamaForCausalLM), a Hub name (gpt2, gpt2-medium, ...) or a local folder, "
                          "into the checkpoint --out")
    p.add_argument("--out", required=True, help="export: folder to write (created; files in it are "
                                                 "overwritten); import: checkpoint to write (atomically)")
    p.add_argument("--overwrite", action="store_true",
                   help="import: replace an existing --out (refused without it: it may be a training checkpoint)")
    p.add_argument("--tokenizer_dir", default=None,
                   help="export only: folder with GPT-2's encoder.json and vocab.bpe, for GPT-2-vocab "
                        f"models (default: {SHARED_GPT2} if present, else download); for SmolLM2- or "
                        "Llama 3-vocab models a folder with its tokenizer.json (the imported one)")
    args = p.parse_args(argv)
    if args.import_src is not None and args.tokenizer_dir is not None:
        raise UserError("--tokenizer_dir is for export; an import reads weights only")
    if args.import_src is not None and Path(args.out).exists() and not args.overwrite:
        raise UserError(f"--out {args.out} exists; choose a new path or replace it with --overwrite")
    return args


check_args(__name__, parse_args)  # --help and usage errors before torch loads
import torch  # noqa: E402

from checkpoint import load, pack, save  # noqa: E402
from model import ROPE_SCALING, GPTConfig  # noqa: E402
from tokenizer import JSON_TOKENIZERS, ByteTokenizer, GPT2Tokenizer, tokenizers_dir  # noqa: E402

# Our parameter names -> GPT2LMHeadModel's: the model's own, then those of each block (a weight
# and a bias each, under blocks.{i}. and transformer.h.{i}.). Export and import both read them.
TOP_NAMES = {"wte.weight": "transformer.wte.weight", "wpe.weight": "transformer.wpe.weight",
             "ln_f.weight": "transformer.ln_f.weight", "ln_f.bias": "transformer.ln_f.bias",
             "head.weight": "lm_head.weight"}
BLOCK_NAMES = {"ln1": "ln_1", "ln2": "ln_2", "attn.qkv": "attn.c_attn", "attn.proj": "attn.c_proj",
               "mlp.fc": "mlp.c_fc", "mlp.proj": "mlp.c_proj"}


def hf_names(n_layer: int) -> dict[str, str]:
    """Every parameter name of ours -> its name in GPT2LMHeadModel."""
    names = dict(TOP_NAMES)
    for i in range(n_layer):
        for ours, theirs in BLOCK_NAMES.items():
            for kind in ("weight", "bias"):
                names[f"blocks.{i}.{ours}.{kind}"] = f"transformer.h.{i}.{theirs}.{kind}"
    return names


def conv1d(ours: str, t):
    """GPT-2's Conv1D stores a block's matrix as (in, out), the transpose of nn.Linear's (out, in),
    so this is its own inverse. Contiguous: safetensors wants every tensor in storage of its own."""
    return (t.t() if ours.startswith("blocks.") and t.dim() == 2 else t).contiguous()


def hf_state_dict(sd: dict, cfg: GPTConfig) -> dict:
    """Our state dict under GPT2LMHeadModel's names."""
    return {theirs: conv1d(ours, sd[ours]) for ours, theirs in hf_names(cfg.n_layer).items()}


def from_hf_state_dict(hf_sd: dict, n_layer: int) -> dict:
    """The inverse of hf_state_dict: GPT2LMHeadModel's tensors under our names and layout (a tied
    lm_head.weight is wte's tensor; its vocabulary as it is, unpadded)."""
    return {ours: conv1d(ours, hf_sd[theirs]) for ours, theirs in hf_names(n_layer).items()}


# Llama: our names -> LlamaForCausalLM's (qkv is split into q_proj, k_proj, v_proj: llama_state_dict)
LLAMA_TOP = {"wte.weight": "model.embed_tokens.weight", "ln_f.weight": "model.norm.weight",
             "head.weight": "lm_head.weight"}
LLAMA_NORMS = {"ln1": "input_layernorm", "ln2": "post_attention_layernorm"}
LLAMA_LINEARS = {"attn.proj": "self_attn.o_proj", "mlp.gate": "mlp.gate_proj", "mlp.fc": "mlp.up_proj",
                 "mlp.proj": "mlp.down_proj"}
LLAMA_QKV = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")


def is_llama(cfg: GPTConfig) -> bool:
    return (cfg.norm, cfg.mlp, cfg.pos) == ("rmsnorm", "swiglu", "rope")


def is_gpt2(cfg: GPTConfig) -> bool:
    return ((cfg.norm, cfg.mlp, cfg.pos, cfg.kv_heads, cfg.bias, cfg.tie_embeddings)
            == ("layernorm", "gelu", "learned", cfg.n_head, True, False))


def llama_state_dict(sd: dict, cfg: GPTConfig) -> dict:
    """Our state dict under LlamaForCausalLM's names (a tied head: lm_head is wte's tensor)."""
    out = {theirs: sd[ours] for ours, theirs in LLAMA_TOP.items()}
    kinds = ("weight", "bias") if cfg.bias else ("weight",)
    kv = cfg.kv_heads * cfg.head_dim
    for i in range(cfg.n_layer):
        ours, theirs = f"blocks.{i}.", f"model.layers.{i}."
        out.update({f"{theirs}{b}.weight": sd[f"{ours}{a}.weight"] for a, b in LLAMA_NORMS.items()})
        for kind in kinds:
            out.update({f"{theirs}{b}.{kind}": sd[f"{ours}{a}.{kind}"] for a, b in LLAMA_LINEARS.items()})
            for name, t in zip(LLAMA_QKV, sd[f"{ours}attn.qkv.{kind}"].split([cfg.n_embd, kv, kv])):
                out[f"{theirs}{name}.{kind}"] = t.contiguous()
    return out


def from_llama_state_dict(hf_sd: dict, cfg: GPTConfig) -> dict:
    """The inverse of llama_state_dict, untied: a tied lm_head is wte's tensor (cloned)."""
    out = {ours: hf_sd[theirs] for ours, theirs in LLAMA_TOP.items() if theirs in hf_sd}
    out["head.weight"] = hf_sd.get("lm_head.weight", out["wte.weight"]).clone()
    kinds = ("weight", "bias") if cfg.bias else ("weight",)
    for i in range(cfg.n_layer):
        ours, theirs = f"blocks.{i}.", f"model.layers.{i}."
        out.update({f"{ours}{a}.weight": hf_sd[f"{theirs}{b}.weight"] for a, b in LLAMA_NORMS.items()})
        for kind in kinds:
            out.update({f"{ours}{a}.{kind}": hf_sd[f"{theirs}{b}.{kind}"] for a, b in LLAMA_LINEARS.items()})
            out[f"{ours}attn.qkv.{kind}"] = torch.cat([hf_sd[f"{theirs}{name}.{kind}"] for name in LLAMA_QKV])
    return out


# model.py's RoPE scaling fields -> the keys of transformers' rope_parameters of rope_type "llama3"
LLAMA3_ROPE = {"rope_factor": "factor", "rope_low_freq_factor": "low_freq_factor",
               "rope_high_freq_factor": "high_freq_factor",
               "rope_original_max_position_embeddings": "original_max_position_embeddings"}
assert tuple(LLAMA3_ROPE) == ROPE_SCALING


def rope_parameters(cfg: GPTConfig) -> dict:
    """transformers' rope_parameters of cfg: "default", or "llama3" when it scales (rope_factor != 1)."""
    if cfg.rope_factor == 1.0:
        return {"rope_type": "default", "rope_theta": cfg.rope_theta}
    return {"rope_type": "llama3", "rope_theta": cfg.rope_theta,
            **{theirs: getattr(cfg, ours) for ours, theirs in LLAMA3_ROPE.items()}}


def rope_scaling_of(rope: dict) -> dict:
    """The inverse of rope_parameters: GPTConfig's scaling fields (none for "default")."""
    if rope.get("rope_type", "default") == "default":
        return {}
    # each cast to its field's type (the original context an int, the factors floats)
    return {ours: type(getattr(GPTConfig, ours))(rope[theirs]) for ours, theirs in LLAMA3_ROPE.items()}


def llama_config(cfg: GPTConfig, eot: int):
    from transformers import LlamaConfig
    return LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.n_embd, intermediate_size=cfg.d_ff,
        num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head, num_key_value_heads=cfg.kv_heads,
        head_dim=cfg.head_dim, max_position_embeddings=cfg.block_size, rms_norm_eps=cfg.norm_eps,
        rope_parameters=rope_parameters(cfg), hidden_act="silu",
        tie_word_embeddings=cfg.tie_embeddings, attention_bias=cfg.bias, mlp_bias=cfg.bias,
        bos_token_id=eot, eos_token_id=eot, architectures=["LlamaForCausalLM"])


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


def folder_tokenizer(tokenizer_dir, block_size: int, name: str):
    """(tokenizer, end-of-text id) of a folder's tokenizer.json (SmolLM2's or Llama 3's, as imported)."""
    from transformers import PreTrainedTokenizerFast
    tokenizer_dir = tokenizer_dir or tokenizers_dir() / name  # where tokenizer.py finds it
    if not (Path(tokenizer_dir) / "tokenizer.json").is_file():
        raise UserError(f"a {name}-vocabulary model needs its tokenizer.json, not found in {tokenizer_dir}: "
                        "pass --tokenizer_dir DIR (the folder it was imported from)")
    eot = JSON_TOKENIZERS[name]
    tok = PreTrainedTokenizerFast(tokenizer_file=str(Path(tokenizer_dir) / "tokenizer.json"),
                                  model_max_length=block_size, eos_token=eot, bos_token=eot)
    return tok, tok.eos_token_id


def need_transformers():
    try:
        import transformers
    except ImportError as e:
        raise UserError(f"export and import need Hugging Face transformers ({e}): pip install transformers") from e
    return transformers


def export(ckpt_path, out, tokenizer_dir=None):
    """Write ckpt_path's model and tokenizer to the folder out; returns the model's config."""
    ckpt = load(ckpt_path)
    cfg = ckpt["config"]
    if cfg.tokenizer == "bytes" and tokenizer_dir is not None:
        raise UserError(f"{ckpt_path} is a byte-level model: a GPT-2 tokenizer would feed it wrong ids; "
                        "drop --tokenizer_dir (a byte tokenizer is exported with it)")
    if not (is_gpt2(cfg) or is_llama(cfg)):
        raise UserError(f"{ckpt_path}: this architecture (norm {cfg.norm}, mlp {cfg.mlp}, pos {cfg.pos}) has no "
                        "transformers class; GPT-2 is layernorm, gelu, learned (biases, no GQA, untied), "
                        "Llama rmsnorm, swiglu, rope")
    transformers = need_transformers()
    if cfg.tokenizer == "gpt2":
        eot = 50256
        tok = gpt2_tokenizer(tokenizer_dir or (SHARED_GPT2 if SHARED_GPT2.is_dir() else None), cfg.block_size)
    elif cfg.tokenizer in JSON_TOKENIZERS:
        tok, eot = folder_tokenizer(tokenizer_dir, cfg.block_size, cfg.tokenizer)
    else:
        eot = 0xFF
        tok = byte_tokenizer(cfg.block_size)

    with torch.device("meta"):  # no memory, no random init: the weights come from the checkpoint
        if is_llama(cfg):
            hf = transformers.LlamaForCausalLM(llama_config(cfg, eot))
            weights = llama_state_dict(ckpt["model"], cfg)
        else:
            hf = transformers.GPT2LMHeadModel(hf_config(cfg, eot))
            weights = hf_state_dict(ckpt["model"], cfg)
    hf.load_state_dict(weights, strict=True, assign=True)
    hf.generation_config = transformers.GenerationConfig(bos_token_id=eot, eos_token_id=eot, pad_token_id=eot)
    try:
        Path(out).mkdir(parents=True, exist_ok=True)
        hf.save_pretrained(out)
        tok.save_pretrained(out)
    except OSError as e:
        raise UserError(f"cannot write {out} ({e.strerror or e}); choose a writable --out") from e
    return cfg


# ---------------------------------------------------------------------------------------------
# Import: a transformers GPT-2 (OpenAI's, or any GPT2LMHeadModel) into a checkpoint of this project

def config_from_hf(hc) -> GPTConfig:
    """Our config of a transformers GPT2Config (vocabulary padded); UserError for a GPT-2 variant
    that computes another function than our GPT."""
    checks = {"activation_function": hc.activation_function in ("gelu_new", "gelu_pytorch_tanh"),
              "scale_attn_weights": hc.scale_attn_weights,  # scores scaled by 1/sqrt(head_dim)
              "scale_attn_by_inverse_layer_idx": not hc.scale_attn_by_inverse_layer_idx,
              "add_cross_attention": not hc.add_cross_attention,
              "n_head": hc.n_embd % hc.n_head == 0}
    bad = [f"{k}={getattr(hc, k)}" for k, ok in checks.items() if not ok]
    if bad:
        raise UserError(f"this GPT-2 variant computes another function than our GPT: {', '.join(bad)}")
    if hc.vocab_size == ByteTokenizer.vocab_size:  # a byte-level member exported by export()
        tokenizer, vocab_size = "bytes", hc.vocab_size
    elif hc.vocab_size >= GPT2Tokenizer.vocab_size:
        tokenizer, vocab_size = "gpt2", -(-hc.vocab_size // 64) * 64  # padded as the presets are
    else:
        raise UserError(f"a vocabulary of {hc.vocab_size} tokens is neither GPT-2's BPE "
                        f"({GPT2Tokenizer.vocab_size}) nor our bytes ({ByteTokenizer.vocab_size})")
    return GPTConfig(hc.n_layer, hc.n_head, hc.n_embd // hc.n_head, hc.n_inner or 4 * hc.n_embd,
                     vocab_size, hc.n_positions, tokenizer, hc.layer_norm_epsilon)


def config_from_llama(hc) -> GPTConfig:
    """Our config of a transformers LlamaConfig (untied; the vocabulary padded as for GPT-2);
    UserError for a Llama that computes another function than model.py's."""
    rope = hc.rope_parameters or {}
    head_dim = getattr(hc, "head_dim", None) or hc.hidden_size // hc.num_attention_heads
    checks = {"hidden_act": hc.hidden_act == "silu",
              "rope_type": rope.get("rope_type", "default") in ("default", "llama3"),  # Llama 3.1's scaling
              "head_dim": head_dim * hc.num_attention_heads == hc.hidden_size,
              "attention_bias": hc.attention_bias == hc.mlp_bias}  # one bias flag for every Linear
    bad = [f"{k}={rope.get('rope_type') if k == 'rope_type' else getattr(hc, k)}" for k, ok in checks.items() if not ok]
    if bad:
        raise UserError(f"this Llama variant computes another function than model.py's: {', '.join(bad)}")
    tokenizer = tokenizer_of_vocab(hc.vocab_size)
    vocab_size = -(-hc.vocab_size // 64) * 64 if tokenizer == "gpt2" else hc.vocab_size
    return GPTConfig(hc.num_hidden_layers, hc.num_attention_heads, head_dim, hc.intermediate_size, vocab_size,
                     hc.max_position_embeddings, tokenizer, hc.rms_norm_eps, "rmsnorm", "swiglu", "rope",
                     float(rope["rope_theta"]), hc.num_key_value_heads or hc.num_attention_heads, hc.attention_bias,
                     **rope_scaling_of(rope))


def tokenizer_of_vocab(n: int) -> str:
    """The tokenizer a Llama's vocabulary size stands for: ours (bytes), GPT-2's, SmolLM2's or Llama 3's."""
    if n == ByteTokenizer.vocab_size:
        return "bytes"
    if GPT2Tokenizer.vocab_size <= n <= GPT2Tokenizer.vocab_size + 63:
        return "gpt2"
    if n in JSON_VOCABS:
        return JSON_VOCABS[n]
    raise UserError(f"a vocabulary of {n} tokens is none of bytes ({ByteTokenizer.vocab_size}), GPT-2's "
                    f"BPE ({GPT2Tokenizer.vocab_size}) or "
                    f"{' or '.join(f'{name} ({n})' for n, name in JSON_VOCABS.items())}")


def pad_vocab(sd: dict, vocab_size: int) -> dict:
    """wte and head grown to vocab_size rows, for ids that the tokenizer never produces.

    wte's new rows are zeros: they are never looked up. head's are the mean of its real rows, so a
    padding id's logit is the mean of the real logits, and as log-sum-exp >= mean + log n (Jensen),
    its probability is at most 1/n under any input (n real tokens; < 0.1% for all 47 of GPT-2's
    padding ids together). Zero rows would give logit 0, which a head without bias cannot keep
    below the real logits. Training only lowers them further, and sample.py never draws them."""
    wte, head = sd["wte.weight"], sd["head.weight"]
    extra = vocab_size - wte.shape[0]
    return {**sd, "wte.weight": torch.cat([wte, wte.new_zeros(extra, wte.shape[1])]),
            "head.weight": torch.cat([head, head.mean(0, keepdim=True).expand(extra, -1)])}


def load_hf(src: str):
    """(GPT2LMHeadModel or LlamaForCausalLM, its config) from a local folder or, when no such
    folder, the Hub."""
    transformers = need_transformers()
    from safetensors import SafetensorError  # a truncated model.safetensors
    folder = Path(src).expanduser()
    if not folder.exists() and src.startswith(("/", ".", "~")):
        raise UserError(f"--import {src}: no such folder")
    if folder.exists() and not (folder / "config.json").is_file():
        raise UserError(f"--import {src} has no config.json: not a transformers model folder")
    where = f"folder {folder}" if folder.exists() else f"Hub model {src!r}"
    src = str(folder) if folder.exists() else src
    kind = "model"  # what the error below names: GPT-2 or Llama once the config is read
    try:
        hc = transformers.AutoConfig.from_pretrained(src)
        kind = {"gpt2": "GPT-2", "llama": "Llama"}.get(hc.model_type, hc.model_type)
        if hc.model_type not in ("gpt2", "llama"):
            raise UserError(f"{where} holds a {hc.model_type} model, not GPT-2 (GPT2LMHeadModel) or "
                            "Llama (LlamaForCausalLM)")
        # refuse a variant before reading its weights
        config_from_llama(hc) if hc.model_type == "llama" else config_from_hf(hc)
        model_class = transformers.LlamaForCausalLM if hc.model_type == "llama" else transformers.GPT2LMHeadModel
        hf, info = model_class.from_pretrained(src, config=hc, dtype=torch.float32, output_loading_info=True)
    except (OSError, ValueError, RuntimeError, SafetensorError) as e:  # offline, no config.json, bad weights
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot load a transformers {kind} from {where}: {reason}") from e
    missing = [k for k in info["missing_keys"] if not (k == "lm_head.weight" and hc.tie_word_embeddings)]
    if missing:
        raise UserError(f"{where} lacks weights of {type(hf).__name__} ({', '.join(missing[:3])}); "
                        "transformers would initialize them at random")
    return hf, hc


@torch.no_grad()
def import_hf(src: str) -> dict:
    """A checkpoint of this project (checkpoint.pack) of a transformers GPT-2: a Hub name or folder.

    The tied embedding becomes an untied head with the same values, GPT-2's Conv1D weights are
    transposed to nn.Linear's layout and the vocabulary is padded (pad_vocab). The config is a
    preset when the shapes are one (OpenAI's GPT-2 -> 124m, ..., 1.5b), else a custom one."""
    hf, hc = load_hf(src)
    if hc.model_type == "llama":
        cfg = config_from_llama(hc)
        sd = from_llama_state_dict(hf.state_dict(), cfg)
    else:
        cfg = config_from_hf(hc)
        sd = from_hf_state_dict(hf.state_dict(), cfg.n_layer)
    sd["head.weight"] = sd["head.weight"].clone()  # untied: storage of its own even when the source ties it
    origin = {"source": src, "architecture": type(hf).__name__, "tied_embeddings": hc.tie_word_embeddings,
              "tokenizer_vocab": hc.vocab_size, "padding": "wte rows 0, head rows the mean of the real rows",
              "flops": "not counted (trained elsewhere)"}
    return pack(cfg, pad_vocab(sd, cfg.vocab_size), meta={"origin": origin})


def main(argv=None):
    args = parse_args(argv)
    if args.import_src is not None:
        ckpt = import_hf(args.import_src)
        save(args.out, ckpt)
        cfg, meta = ckpt["config"], ckpt["meta"]
        print(f"wrote {args.out}: {meta['size']}, {cfg['n_layer']} layers, width "
              f"{cfg['n_head'] * cfg['head_dim']}, vocab {meta['origin']['tokenizer_vocab']} padded to "
              f"{cfg['vocab_size']}")
        return
    cfg = export(args.ckpt, args.out, args.tokenizer_dir)
    print(f"wrote {args.out}: {'LlamaForCausalLM' if is_llama(cfg) else 'GPT2LMHeadModel'}, {cfg.n_layer} layers, width {cfg.n_embd}, "
          f"{cfg.tokenizer} tokenizer")


if __name__ == "__main__":
    run_cli(main)
