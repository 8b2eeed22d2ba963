"""Reading the token files that data/prepare.py writes.

A data folder holds `train.bin` and `val.bin` (flat arrays of token ids, dtype as meta.json says:
uint8 for bytes, uint16 for GPT-2) and `meta.json` (tokenizer, vocab_size, dtype, token counts,
source, checksums).
"""
import json
from pathlib import Path

import numpy as np

from util import UserError, file_sha256

META_KEYS = ("tokenizer", "vocab_size", "dtype", "train_tokens", "val_tokens")
# Token files up to this size are checked against meta.json's SHA-256 each time they are opened
# (train.py: start and resume; evaluate.py): 270 MB/s measured on the busy 2-core CPU machine, so
# 0.16 s for OpenStax as bytes (42 MB) and at most about 4 s. Larger ones (FineWeb-Edu's billions of
# tokens) by their size only.
CHECKSUM_BYTES = 1 << 30


def read_meta(data_dir) -> dict:
    path = Path(data_dir) / "meta.json"
    if not path.is_file():
        raise UserError(f"no prepared data in {data_dir} (missing meta.json); run "
                        f"`python data/prepare.py --out {data_dir}` first")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({getattr(e, 'msg', e.reason)}); re-run data/prepare.py") from e
    missing = [k for k in META_KEYS if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise UserError(f"{path} lacks {', '.join(missing)}: not written by data/prepare.py; re-run it")
    try:
        np.dtype(meta["dtype"])
    except TypeError as e:
        raise UserError(f"{path} names an unknown dtype {meta['dtype']!r}; re-run data/prepare.py") from e
    return meta


def open_split(data_dir, split: str) -> tuple[np.ndarray, dict]:
    """(memory-mapped token array, meta) of 'train' or 'val'."""
    meta = read_meta(data_dir)
    path = check_split(data_dir, split, meta)
    return np.memmap(path, dtype=np.dtype(meta["dtype"]), mode="r"), meta


def check_split(data_dir, split: str, meta: dict) -> Path:
    """The path of a split's token file, checked against meta.json: its size always, its SHA-256 when
    it is at most CHECKSUM_BYTES."""
    path = Path(data_dir) / f"{split}.bin"
    if not path.is_file() or path.stat().st_size == 0:
        raise UserError(f"{path} is missing or empty; re-run data/prepare.py")
    dtype, size = np.dtype(meta["dtype"]), path.stat().st_size
    if size != meta[f"{split}_tokens"] * dtype.itemsize:
        raise UserError(f"{path} holds {size} bytes but meta.json says {meta[f'{split}_tokens']} tokens of "
                        f"{dtype.name} ({meta[f'{split}_tokens'] * dtype.itemsize} bytes): the file is "
                        f"truncated or changed; re-run data/prepare.py")
    digest = (meta.get("sha256") or {}).get(split)  # folders from before checksums: size only
    if digest and size <= CHECKSUM_BYTES and file_sha256(path) != digest:
        raise UserError(f"{path} does not match its SHA-256 in meta.json: it changed after data/prepare.py "
                        f"wrote it; re-run data/prepare.py")
    return path


def val_windows(tokens: np.ndarray, block_size: int, max_tokens: int) -> "torch.Tensor":
    """(n, block_size + 1) evenly spaced, non-overlapping windows: inputs and their next tokens.
    Deterministic, so every member and every pair sees the same tokens."""
    if len(tokens) < block_size + 1:
        raise UserError(f"the validation split has {len(tokens)} tokens, fewer than one context "
                        f"of {block_size + 1}; prepare more validation data")
    import torch  # here: data/prepare.py imports this module and needs no torch
    n = max(1, min(max_tokens // block_size, (len(tokens) - 1) // block_size))
    starts = np.linspace(0, len(tokens) - block_size - 1, n).astype(np.int64)
    return torch.from_numpy(np.stack([tokens[s:s + block_size + 1] for s in starts]).astype(np.int64))
