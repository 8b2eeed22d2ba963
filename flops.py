"""
FLOPs of training a GPT of this project, and the family budget.

Per token, one forward+backward pass costs (backward = 2 x forward):

    train_flops_per_token = 6 * N_matmul + 12 * n_layer * n_embd * T

- N_matmul = n_layer * (4 d^2 + 2 d d_ff) + vocab * d: every weight that takes part in a matrix
  multiply, the output head included; embedding lookups, biases and LayerNorms are not counted.
- 12 L d T: attention scores q.k^T and the weighted sum of v, 2 * T * d multiply-adds each per
  layer forward. We count the full T x T square, as PaLM's MFU and torch's FlopCounterMode do;
  a causal kernel does only about half of that useful work.
"""
from model import GPTConfig, count_params


def train_flops_per_token(cfg: GPTConfig, seq_len: int | None = None) -> float:
    T = cfg.block_size if seq_len is None else seq_len
    return 6 * count_params(cfg)["matmul"] + 12 * cfg.n_layer * cfg.n_embd * T
