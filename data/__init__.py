"""Reading the token files that data/prepare.py writes.

A data folder holds `train.bin` and `val.bin` (flat arrays of token ids, dtype as meta.json says:
uint8 for bytes, uint16 for GPT-2) and `meta.json` (tokenizer, vocab_size, dtype, token counts,
source, checksums).
"""
import json
from pathlib import Path

import numpy as np
import torch

from util import UserError


def read_meta(data_dir) -> dict:
    path = Path(data_dir) / "meta.json"
    if not path.is_file():
        raise UserError(f"no prepared data in {data_dir} (missing meta.json); run "
                        f"`python data/prepare.py --out {data_dir}` first")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e.msg}); re-run data/prepare.py") from e


def open_split(data_dir, split: str) -> tuple[np.ndarray, dict]:
    """(memory-mapped token array, meta) of 'train' or 'val'."""
    meta = read_meta(data_dir)
    path = Path(data_dir) / f"{split}.bin"
    if not path.is_file() or path.stat().st_size == 0:
        raise UserError(f"{path} is missing or empty; re-run data/prepare.py")
    tokens = np.memmap(path, dtype=np.dtype(meta["dtype"]), mode="r")
    if len(tokens) != meta[f"{split}_tokens"]:
        raise UserError(f"{path} holds {len(tokens)} tokens but meta.json says "
                        f"{meta[f'{split}_tokens']}: the file is truncated; re-run data/prepare.py")
    return tokens, meta


def val_windows(tokens: np.ndarray, block_size: int, max_tokens: int) -> torch.Tensor:
    """(n, block_size + 1) evenly spaced, non-overlapping windows: inputs and their next tokens.
    Deterministic, so every member and every pair sees the same tokens."""
    if len(tokens) < block_size + 1:
        raise UserError(f"the validation split has {len(tokens)} tokens, fewer than one context "
                        f"of {block_size + 1}; prepare more validation data")
    n = max(1, min(max_tokens // block_size, (len(tokens) - 1) // block_size))
    starts = np.linspace(0, len(tokens) - block_size - 1, n).astype(np.int64)
    return torch.from_numpy(np.stack([tokens[s:s + block_size + 1] for s in starts]).astype(np.int64))
