"""Reading the token files that data/prepare.py writes.

A data folder holds `train.bin` and `val.bin` (flat arrays of token ids, dtype as meta.json says:
uint8 for bytes, uint16 for GPT-2) and `meta.json` (tokenizer, vocab_size, dtype, token counts,
source, checksums).
"""
import json
from pathlib import Path

import numpy as np

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
