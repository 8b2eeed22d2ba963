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

`python flops.py --presets` prints every preset as a table.
"""
import math
from dataclasses import dataclass, asdict, field

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
    tokenizer: str  # "bytes" or "gpt2": data and checkpoints must agree on it
    norm_eps: float = 1e-5

    @property
    def n_embd(self) -> int:
        return self.n_head * self.head_dim

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GPTConfig":
        return cls(**d)


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
    # gpt2: named after GPT-2's own counts (tied head, 50,257 tokens); untied and padded here
    # they are 163M, 406M, 838M and 1.64B. 124m -> 355m is 1.33x in width, not integral
    "124m": _gpt2(12, 12),  # width 768
    "355m": _gpt2(24, 16),  # width 1024
    "774m": _gpt2(36, 20),  # width 1280
    "1.5b": _gpt2(48, 25),  # width 1600
}
FAMILIES = {"paper": ["1b", "2b", "4b", "8b"], "tiny": ["20k", "50k", "120k", "250k"],
            "gpt2": ["124m", "355m", "774m", "1.5b"]}


def get_config(size: str) -> GPTConfig:
    if size not in PRESETS:
        raise UserError(f"unknown size {size!r}; choose one of: {', '.join(PRESETS)}")
    return PRESETS[size]


def count_params(cfg: GPTConfig) -> dict:
    """Closed-form parameter counts (tests check them against the built module)."""
    d, f, L = cfg.n_embd, cfg.d_ff, cfg.n_layer
    per_layer = (
        2 * 2 * d  # ln1, ln2 (weight + bias)
        + 3 * d * d + 3 * d  # qkv
        + d * d + d  # attention output projection
        + d * f + f  # mlp up
        + f * d + d  # mlp down
    )
    embedding = cfg.vocab_size * d + cfg.block_size * d  # wte + wpe: lookups, no matmul
    head = cfg.vocab_size * d  # untied output head, no bias
    body = L * per_layer + 2 * d  # + final LayerNorm
    return {"total": embedding + body + head, "non_embedding": body + head, "embedding": embedding,
            "matmul": L * (4 * d * d + 2 * d * f) + head}


# ---------------------------------------------------------------------------------------------
# Layers. On CUDA (and with use_kernels) LayerNorm and attention run the Triton kernels of
# gpt_kernels.py; elsewhere PyTorch's own ops, which are faster than Triton's CPU interpreter.

class LayerNorm(nn.Module):
    def __init__(self, d, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.bias = nn.Parameter(torch.zeros(d))
        self.eps = eps
        self.use_kernels = False
        self.kernels_on_cpu = False  # GPT.set_kernels(on, on_cpu=True): tests only

    def forward(self, x):
        if self.use_kernels and (x.is_cuda or self.kernels_on_cpu):
            import gpt_kernels as kernels
            return kernels.layer_norm(x, self.weight, self.bias, self.eps)
        return F.layer_norm(x, (x.shape[-1],), self.weight, self.bias, self.eps)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head, self.head_dim = cfg.n_head, cfg.head_dim
        # qkv rows are laid out [q heads | k heads | v heads], each head a block of head_dim rows
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.use_kernels = False
        self.kernels_on_cpu = False  # GPT.set_kernels(on, on_cpu=True): tests only

    def forward(self, x, cache=None, layer=0):
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)
        if cache is not None:  # generation: the new queries also see every cached position
            k, v = cache.append(layer, k, v)
            # new query i sits at position len(cache) + i: it sees the keys up to its own
            mask = torch.ones(T, k.size(2), dtype=torch.bool, device=x.device).tril(k.size(2) - T)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        elif self.use_kernels and (x.is_cuda or self.kernels_on_cpu):
            import gpt_kernels as kernels
            y = kernels.causal_attention(q, k, v)
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.n_embd, cfg.d_ff)
        self.proj = nn.Linear(cfg.d_ff, cfg.n_embd)

    def forward(self, x):
        # tanh-approximate GELU, as GPT-2 uses: the exported model then matches exactly
        return self.proj(F.gelu(self.fc(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln1 = LayerNorm(cfg.n_embd, cfg.norm_eps)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = LayerNorm(cfg.n_embd, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cache=None, layer=0):
        x = x + self.attn(self.ln1(x), cache, layer)
        return x + self.mlp(self.ln2(x))


@dataclass
class KVCache:
    """The keys and values of the positions run so far, one (B, n_head, T, head_dim) pair per layer:
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
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = LayerNorm(cfg.n_embd, cfg.norm_eps)
        self.head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
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
        x = self.wte(idx) + self.wpe(torch.arange(start, start + T, device=idx.device))
        for layer, block in enumerate(self.blocks):
            x = block(x, cache, layer)
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
