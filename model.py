"""
The GPT of the family: a pre-LN transformer (GPT-2 layout), its configuration and size presets.

Design choices that the rest of the project leans on:
- The input embedding `wte` and the output head `head` are UNTIED, so that growing the width
  (expand.py) can copy rows of one and divide columns of the other independently and stay exactly
  function-preserving.
- head_dim is fixed within a family: width grows by adding heads, so a head is one unit of growth.
- Positions are LEARNED (`wpe`, GPT-2 style) rather than RoPE: a position table is one more producer
  of the residual width, widened by the same index map as `wte`, and it maps 1:1 onto the standard
  GPT-2 architecture for export (export_hf.py) without custom code.

The architecture is configuration, so the same module is also a Llama (Llama 3, SmolLM2):
GPTConfig's `norm` (layernorm | rmsnorm), `mlp` (gelu | swiglu), `pos` (learned | rope, base
`rope_theta`, Llama 3.1's frequency scaling `rope_factor` and its fields), `n_kv_head` (grouped-query
attention: n_head / n_kv_head query heads share one key and value head), `bias` (biases of every
Linear and LayerNorm) and `tie_embeddings` (head = wte). The defaults are the GPT-2 layout above, so
a checkpoint written before these fields existed loads as it was. A Llama member keeps the same
parameter names (ln1, attn.qkv, mlp.fc, ...): RMSNorm is `ln*`, SwiGLU's up projection is `mlp.fc`,
its gate `mlp.gate`, its down projection `mlp.proj`, and qkv's rows are [q heads | k heads | v heads]
with n_kv_head heads in k and in v. RoPE is Hugging Face's Llama form (rotate_half over the two
halves of a head), so export_hf.py maps the weights 1:1.

`python flops.py --presets` prints every preset as a table.
"""
import math
from dataclasses import dataclass, asdict, field, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from util import UserError


@dataclass(frozen=True)
class GPTConfig:
    n_layer: int
    n_head: int
    head_dim: int
    d_ff: int  # hidden size of the MLP (4 * n_embd in every preset)
    vocab_size: int  # padded size of the embedding/head; tokens >= tokenizer vocab are never seen
    block_size: int  # context length
    tokenizer: str  # "bytes", "gpt2" or "smollm2" (tokenizer.py): data and checkpoints must agree on it
    norm_eps: float = 1e-5
    norm: str = "layernorm"  # or "rmsnorm"
    mlp: str = "gelu"  # tanh-GELU, or "swiglu": proj(silu(gate x) * fc x)
    pos: str = "learned"  # or "rope": rotary positions, no wpe
    rope_theta: float = 10000.0  # RoPE's base: head pair i turns by position * theta^(-2i/head_dim)
    n_kv_head: int | None = None  # key/value heads (grouped-query attention); None: n_head
    bias: bool = True  # biases in every Linear and LayerNorm (the head never has one)
    tie_embeddings: bool = False  # head.weight is wte.weight (expand.py grows untied members only)
    # Llama 3.1's RoPE frequency scaling (Hugging Face's rope_type "llama3", rope_inv_freq): slow
    # frequencies divided by rope_factor, fast ones kept, a smooth blend between; 1.0: none
    rope_factor: float = 1.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_position_embeddings: int = 8192

    def __post_init__(self):
        choices = {"norm": ("layernorm", "rmsnorm"), "mlp": ("gelu", "swiglu"), "pos": ("learned", "rope")}
        bad = [f"{k} {getattr(self, k)!r} (choose {' or '.join(v)})" for k, v in choices.items()
               if getattr(self, k) not in v]
        if self.n_head % self.kv_heads:
            bad.append(f"n_kv_head {self.n_kv_head} does not divide n_head {self.n_head}")
        if self.pos == "rope" and self.head_dim % 2:
            bad.append(f"RoPE needs an even head_dim, got {self.head_dim}")
        if self.rope_factor != 1.0 and not (self.pos == "rope" and self.rope_factor > 0
                                            and 0 < self.rope_low_freq_factor < self.rope_high_freq_factor
                                            and self.rope_original_max_position_embeddings > 0):
            bad.append("RoPE scaling needs pos rope, rope_factor > 0, 0 < rope_low_freq_factor < "
                       "rope_high_freq_factor and rope_original_max_position_embeddings > 0")
        if bad:
            raise UserError(f"invalid model config: {'; '.join(bad)}")

    @property
    def n_embd(self) -> int:
        return self.n_head * self.head_dim

    @property
    def kv_heads(self) -> int:
        return self.n_head if self.n_kv_head is None else self.n_kv_head

    @property
    def group_size(self) -> int:  # query heads per key/value head (1: multi-head attention)
        return self.n_head // self.kv_heads

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GPTConfig":
        return cls(**d)


# the fields of Llama 3.1's RoPE scaling, as one unit: growth keeps them, export_hf.py maps them
ROPE_SCALING = ("rope_factor", "rope_low_freq_factor", "rope_high_freq_factor", "rope_original_max_position_embeddings")


def _paper(n_layer, n_head):
    # GPT-2 BPE: 50,257 tokens padded to 50,304 (a multiple of 64, for fast matmuls)
    return GPTConfig(n_layer, n_head, 128, 4 * 128 * n_head, 50304, 1024, "gpt2")


def _gpt2(n_layer, n_head):
    # OpenAI's GPT-2 shapes (head_dim 64, context 1024), vocab padded as _paper's: export_hf.py
    # --import reads GPT-2's weights into these presets
    return GPTConfig(n_layer, n_head, 64, 4 * 64 * n_head, 50304, 1024, "gpt2")


def _tiny(n_layer, n_head):
    # byte-level: the 256-entry head keeps the output layer small next to the body
    return GPTConfig(n_layer, n_head, 16, 4 * 16 * n_head, 256, 256, "bytes")


def _llama(n_layer, n_head, d_ff, head_dim=128, group=4, vocab_size=50304, block_size=1024,
           tokenizer="gpt2", rope_theta=500000.0):
    """Llama 3's architecture: RMSNorm, SwiGLU, RoPE, grouped-query attention, no biases (untied)."""
    return GPTConfig(n_layer, n_head, head_dim, d_ff, vocab_size, block_size, tokenizer, 1e-5, "rmsnorm",
                     "swiglu", "rope", rope_theta, n_head // group, False)


def _smollm2(n_layer, n_head, n_kv_head, d_ff, rope_theta):
    # SmolLM2's shapes (head_dim 64, 49,152 tokens, context 8192), untied as export_hf.py imports them
    return _llama(n_layer, n_head, d_ff, 64, n_head // n_kv_head, 49152, 8192, "smollm2", rope_theta)


def _llama32(n_layer, n_head, d_ff):
    # Llama 3.2's architecture (head_dim 64, 4 query heads per KV head, Llama 3's 128,256 tokens,
    # context 131,072 by Llama 3.1's RoPE scaling: factor 32 over 8192 positions), untied as
    # export_hf.py imports it
    return replace(_llama(n_layer, n_head, d_ff, 64, 4, 128256, 131072, "llama3"), rope_factor=32.0)


def _tiny_llama(n_layer, n_head, d_ff):
    # the tiny family's widths and depths as Llamas: head_dim 8 so that two query heads share each
    # key/value head; d_ff chosen so that every member has its tiny counterpart's count within 3%
    return _llama(n_layer, n_head, d_ff, 8, 2, 256, 256, "bytes", 10000.0)


# Llama-shaped presets (`python flops.py --presets`). llama: Llama 3's architecture and shapes
# (head_dim 128, 4 query heads per KV head, Llama 3 8B's body exactly, Llama 3.2 1B's width and
# depth) on the paper family's GPT-2 vocabulary and context, so the paper's data and recipe apply.
# smollm2: SmolLM2's shapes (export_hf.py --import reads its folders into them; its own counts are
# 135M, 362M and 1.71B with the tied head). The 1.7b is in no family: it is shallower than the 360m
# (24 blocks against 32) and has no query groups (group size 3 -> 1), and expand.py grows within one
# group size only, as within one head_dim. llama3.2: Llama 3.2 1B's shape (export_hf.py --import reads
# its folder into it) and a target to grow it into, the 3B's width, depth and FFN at the 1B's head_dim
# and group size (the 3B itself has head_dim 128 and 3 query heads per KV head: another family).
LLAMA_PRESETS = {
    "llama-20k": _tiny_llama(2, 2, 96),  # width 16
    "llama-50k": _tiny_llama(2, 4, 144),  # width 32
    "llama-120k": _tiny_llama(3, 6, 176),  # width 48
    "llama-250k": _tiny_llama(4, 8, 224),  # width 64
    "llama-1b": _llama(16, 16, 8192),  # width 2048, 1.18B
    "llama-2b": _llama(20, 20, 9216),  # width 2560, 2.0B
    "llama-4b": _llama(28, 28, 9728),  # width 3584, 4.19B
    "llama-8b": _llama(32, 32, 14336),  # width 4096, 7.39B (8.03B on Llama 3's 128k vocabulary)
    "smollm2-135m": _smollm2(30, 9, 3, 1536, 100000.0),  # width 576
    "smollm2-360m": _smollm2(32, 15, 5, 2560, 100000.0),  # width 960
    "smollm2-1.7b": _smollm2(24, 32, 32, 8192, 130000.0),  # width 2048
    "llama3.2-1b": _llama32(16, 32, 8192),  # width 2048, 1.50B (1.24B tied)
    "llama3.2-3b-hd64": _llama32(28, 48, 8192),  # width 3072, 3.56B
}
LLAMA_FAMILIES = {"tiny-llama": ["llama-20k", "llama-50k", "llama-120k", "llama-250k"],
                  "llama": ["llama-1b", "llama-2b", "llama-4b", "llama-8b"],
                  "smollm2": ["smollm2-135m", "smollm2-360m"]}

# Names are the total parameter counts, rounded (see the table of `python flops.py --presets`).
PRESETS = {
    "1b": _paper(16, 16),  # width 2048
    "2b": _paper(22, 20),  # width 2560
    "4b": _paper(28, 26),  # width 3328
    "8b": _paper(38, 32),  # width 4096
    # tiny: sized so that the whole CPU experiment fits minutes. 20k -> 50k and the skip
    # 50k -> 250k are exact 2x widths (FPI is exact there); the other steps are 1.5x and 1.33x
    "20k": _tiny(2, 1),  # width 16
    "50k": _tiny(2, 2),  # width 32
    "120k": _tiny(3, 3),  # width 48
    "250k": _tiny(4, 4),  # width 64
    "500k": _tiny(6, 5),  # width 80: 1.25x width and 1.5x depth of 250k (tiny5 only, not the default)
    # gpt2: named after GPT-2's own counts (tied head, 50,257 tokens); untied and padded here
    # they are 163M, 406M, 838M and 1.64B. 124m -> 355m is 1.33x in width, not integral
    "124m": _gpt2(12, 12),  # width 768
    "355m": _gpt2(24, 16),  # width 1024
    "774m": _gpt2(36, 20),  # width 1280
    "1.5b": _gpt2(48, 25),  # width 1600
    **LLAMA_PRESETS,
}
FAMILIES = {"paper": ["1b", "2b", "4b", "8b"], "tiny": ["20k", "50k", "120k", "250k"],
            "tiny5": ["20k", "50k", "120k", "250k", "500k"],  # tiny plus a 500k, for the trend over sizes
            "gpt2": ["124m", "355m", "774m", "1.5b"], **LLAMA_FAMILIES}


def get_config(size: str) -> GPTConfig:
    if size not in PRESETS:
        raise UserError(f"unknown size {size!r}; choose one of: {', '.join(PRESETS)}")
    return PRESETS[size]


def count_params(cfg: GPTConfig) -> dict:
    """Closed-form parameter counts (tests check them against the built module)."""
    d, f, L, b = cfg.n_embd, cfg.d_ff, cfg.n_layer, int(cfg.bias)
    kv = cfg.kv_heads * cfg.head_dim  # width of k and of v
    norm = d * (1 + b if cfg.norm == "layernorm" else 1)  # gain (+ bias)
    up = 2 if cfg.mlp == "swiglu" else 1  # mlp.fc, and SwiGLU's mlp.gate
    per_layer = (
        2 * norm  # ln1, ln2
        + d * (d + 2 * kv) + b * (d + 2 * kv)  # qkv
        + d * d + b * d  # attention output projection
        + up * (d * f + b * f)  # mlp up (and gate)
        + f * d + b * d  # mlp down
    )
    # wte (+ wpe): lookups, no matmul
    embedding = cfg.vocab_size * d + (cfg.block_size * d if cfg.pos == "learned" else 0)
    head = 0 if cfg.tie_embeddings else cfg.vocab_size * d  # output head, no bias (tied: wte's)
    body = L * per_layer + norm  # + final norm
    return {"total": embedding + body + head, "non_embedding": body + head, "embedding": embedding,
            "matmul": L * (d * (d + 2 * kv) + d * d + (up + 1) * d * f) + cfg.vocab_size * d}


# ---------------------------------------------------------------------------------------------
# Layers. On CUDA (and with use_kernels) LayerNorm and attention run the Triton kernels of
# gpt_kernels.py; elsewhere PyTorch's own ops, which are faster than Triton's CPU interpreter.

class LayerNorm(nn.Module):
    def __init__(self, d, eps, bias=True):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.bias = nn.Parameter(torch.zeros(d)) if bias else None
        self.eps = eps
        self.use_kernels = False
        self.kernels_on_cpu = False  # GPT.set_kernels(on, on_cpu=True): tests only

    def forward(self, x):
        if self.use_kernels and self.bias is not None and (x.is_cuda or self.kernels_on_cpu):
            import gpt_kernels as kernels
            return kernels.layer_norm(x, self.weight, self.bias, self.eps)
        return F.layer_norm(x, (x.shape[-1],), self.weight, self.bias, self.eps)


class RMSNorm(LayerNorm):
    """x / sqrt(mean(x^2) + eps) * weight: Llama's norm, no mean subtracted and no bias."""
    def __init__(self, d, eps):
        super().__init__(d, eps, bias=False)

    def forward(self, x):
        if self.use_kernels and (x.is_cuda or self.kernels_on_cpu):
            import gpt_kernels as kernels
            return kernels.rms_norm(x, self.weight, self.eps)
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def make_norm(cfg: GPTConfig) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return RMSNorm(cfg.n_embd, cfg.norm_eps)
    return LayerNorm(cfg.n_embd, cfg.norm_eps, cfg.bias)


def rope_inv_freq(cfg: GPTConfig, device) -> torch.Tensor:
    """The angle per position of each dimension pair i: w_i = theta^(-2i/head_dim), then, when
    rope_factor s != 1, Llama 3.1's scaling by wavelength 2 pi / w_i against the pretraining context
    L (rope_original_max_position_embeddings) and the factors l < h (rope_low/high_freq_factor):
        wavelength < L / h:  w_i            (fast pairs: positions within the context, kept)
        wavelength > L / l:  w_i / s        (slow pairs: stretched s times, for s L positions)
        otherwise:           (1 - a) w_i / s + a w_i,  a = (L / wavelength - l) / (h - l)"""
    inv_freq = cfg.rope_theta ** -(torch.arange(0, cfg.head_dim, 2, device=device, dtype=torch.float32) / cfg.head_dim)
    if cfg.rope_factor == 1.0:  # no scaling: not even the blend's float rounding
        return inv_freq
    s, L = cfg.rope_factor, cfg.rope_original_max_position_embeddings
    low, high = cfg.rope_low_freq_factor, cfg.rope_high_freq_factor
    wavelength = 2 * math.pi / inv_freq
    a = (L / wavelength - low) / (high - low)
    blend = (1 - a) * inv_freq / s + a * inv_freq
    return torch.where(wavelength < L / high, inv_freq, torch.where(wavelength > L / low, inv_freq / s, blend))


def rope_tables(cfg: GPTConfig, start: int, T: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (T, head_dim) of positions start..start+T-1: dimension pair (i, i + head_dim/2)
    turns by angle position * w_i (rope_inv_freq), Hugging Face Llama's layout (rotate_half)."""
    inv_freq = rope_inv_freq(cfg, device)
    angles = torch.outer(torch.arange(start, start + T, device=device, dtype=torch.float32), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """x (B, heads, T, head_dim) rotated pairwise by the angles of its positions."""
    cos, sin = rope
    x1, x2 = x.chunk(2, dim=-1)
    return (x * cos + torch.cat([-x2, x1], dim=-1) * sin).to(x.dtype)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.kv_heads, cfg.head_dim
        # qkv rows are laid out [q heads | k heads | v heads], each head a block of head_dim rows;
        # with grouped-query attention k and v have n_kv_head heads, and query head a reads kv head
        # a div group_size (as SDPA's enable_gqa and Hugging Face's repeat_kv do)
        self.qkv = nn.Linear(cfg.n_embd, (cfg.n_head + 2 * cfg.kv_heads) * cfg.head_dim, bias=cfg.bias)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.use_kernels = False
        self.kernels_on_cpu = False  # GPT.set_kernels(on, on_cpu=True): tests only

    def forward(self, x, cache=None, layer=0, rope=None):
        B, T, C = x.shape
        if self.n_kv_head == self.n_head:
            q, k, v = self.qkv(x).view(B, T, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)
        else:
            q, k, v = self.qkv(x).view(B, T, -1, self.head_dim).transpose(1, 2).split(
                [self.n_head, self.n_kv_head, self.n_kv_head], dim=1)
        if rope is not None:
            q, k = apply_rope(q, rope), apply_rope(k, rope)
        gqa = {"enable_gqa": True} if self.n_kv_head != self.n_head else {}
        if cache is not None:  # generation: the new queries also see every cached position
            k, v = cache.append(layer, k, v)
            # new query i sits at position len(cache) + i: it sees the keys up to its own
            mask = torch.ones(T, k.size(2), dtype=torch.bool, device=x.device).tril(k.size(2) - T)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, **gqa)
        elif self.use_kernels and (x.is_cuda or self.kernels_on_cpu):
            import gpt_kernels as kernels
            if gqa:  # the kernel takes one key/value head per query head: expand the groups
                k, v = (t.repeat_interleave(self.n_head // self.n_kv_head, dim=1) for t in (k, v))
            y = kernels.causal_attention(q, k, v)
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, **gqa)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.swiglu = cfg.mlp == "swiglu"
        if self.swiglu:
            self.gate = nn.Linear(cfg.n_embd, cfg.d_ff, bias=cfg.bias)
        self.fc = nn.Linear(cfg.n_embd, cfg.d_ff, bias=cfg.bias)
        self.proj = nn.Linear(cfg.d_ff, cfg.n_embd, bias=cfg.bias)

    def forward(self, x):
        if self.swiglu:  # Llama's: proj(silu(gate x) * up x), up being fc
            return self.proj(F.silu(self.gate(x)) * self.fc(x))
        # tanh-approximate GELU, as GPT-2 uses: the exported model then matches exactly
        return self.proj(F.gelu(self.fc(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln1 = make_norm(cfg)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = make_norm(cfg)
        self.mlp = MLP(cfg)

    def forward(self, x, cache=None, layer=0, rope=None):
        x = x + self.attn(self.ln1(x), cache, layer, rope)
        return x + self.mlp(self.ln2(x))


@dataclass
class KVCache:
    """The keys and values of the positions run so far, one (B, n_kv_head, T, head_dim) pair per layer:
    generation then runs only the new positions. Inference only (sample.py)."""
    k: list[torch.Tensor] = field(default_factory=list)
    v: list[torch.Tensor] = field(default_factory=list)

    def __len__(self) -> int:  # positions cached
        return self.k[0].size(2) if self.k else 0

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Add the new positions' keys and values of one layer; return all of that layer's."""
        if layer == len(self.k):
            self.k.append(k)
            self.v.append(v)
        else:
            self.k[layer] = torch.cat([self.k[layer], k], dim=2)
            self.v[layer] = torch.cat([self.v[layer], v], dim=2)
        return self.k[layer], self.v[layer]

    def crop(self, n: int):
        """Keep the first n positions: forget draft tokens the target rejected."""
        self.k = [k[:, :, :n] for k in self.k]
        self.v = [v[:, :, :n] for v in self.v]


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig, use_kernels: bool = True):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        if cfg.pos == "learned":
            self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = make_norm(cfg)
        self.head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.head.weight = self.wte.weight
        self.set_kernels(use_kernels)
        if not any(p.is_meta for p in self.parameters()):
            self.reset_parameters()

    def set_kernels(self, on: bool, on_cpu: bool = False):
        """Use the Triton kernels for LayerNorm and attention when the input is on CUDA. on_cpu:
        on CPU tensors too, which only Triton's interpreter (TRITON_INTERPRET=1) runs: for tests."""
        for m in self.modules():
            if isinstance(m, (LayerNorm, CausalSelfAttention)):
                m.use_kernels = on
                m.kernels_on_cpu = on_cpu

    @torch.no_grad()
    def reset_parameters(self):
        # GPT-2 init: N(0, 0.02); projections into the residual stream scaled by 1/sqrt(2L) so
        # that the residual's variance does not grow with depth
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif p.dim() == 1:  # LayerNorm gains
                p.fill_(1.0)
            elif name.endswith("attn.proj.weight") or name.endswith("mlp.proj.weight"):
                p.normal_(0.0, 0.02 / math.sqrt(2 * self.cfg.n_layer))
            else:
                p.normal_(0.0, 0.02)

    def forward(self, idx, targets=None, cache=None):
        """idx (B, T) token ids -> logits (B, T, vocab); with targets also the mean cross-entropy.
        With a KVCache (generation), idx continues the tokens cached: only they are run, at positions
        len(cache) on, and their keys and values join the cache."""
        B, T = idx.shape
        start = len(cache) if cache is not None else 0
        if start + T > self.cfg.block_size:
            raise ValueError(f"sequence length {start + T} exceeds the model's context {self.cfg.block_size}")
        if self.cfg.pos == "learned":
            x, rope = self.wte(idx) + self.wpe(torch.arange(start, start + T, device=idx.device)), None
        else:
            x, rope = self.wte(idx), rope_tables(self.cfg, start, T, idx.device)
        for layer, block in enumerate(self.blocks):
            x = block(x, cache, layer, rope)
        logits = self.head(self.ln_f(x))
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss


# ---------------------------------------------------------------------------------------------
# Optimizer parameter groups (train.py builds AdamW from them; expand.py grows its state by them)

def group_names(model: torch.nn.Module) -> list[list[str]]:
    """Group 0 (decayed): matrices and embeddings; group 1: biases and LayerNorm gains.

    Each group lists parameters in named_parameters() order: checkpoints store AdamW state by
    index in this layout, and expand.py uses it to find a parameter's moments by name.
    """
    named = list(model.named_parameters())
    return [[n for n, p in named if p.dim() >= 2], [n for n, p in named if p.dim() < 2]]


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    params = dict(model.named_parameters())
    names = group_names(model)
    return [{"params": [params[n] for n in names[0]], "weight_decay": weight_decay},
            {"params": [params[n] for n in names[1]], "weight_decay": 0.0}]
