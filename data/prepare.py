"""
Tokenize a text corpus into train.bin / val.bin (+ meta.json) for train.py and evaluate.py.

    python data/prepare.py --out data/openstax_bytes --dataset ../shared/data/corpus/openstax --tokenizer bytes
    python data/prepare.py --out data/fineweb_gpt2 --tokens 10_000_000_000      # FineWeb-Edu, streamed

Documents are streamed (bounded memory whatever the input size), encoded on all cores, and each is
preceded by the tokenizer's end-of-text token, as GPT-2 was trained. The validation split is given
by the source (files named val*) or else chosen by a hash of each document's text, so the splits
are disjoint and the same on every run. The token files are written under temp names and renamed;
meta.json comes last and marks a finished run: re-running with the same inputs does nothing.
"""
import argparse
import fcntl
import hashlib
import itertools
import json
import os
import sys
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tokenizer import get_tokenizer  # noqa: E402
from util import UserError, run_cli, write_json  # noqa: E402

TEXT_SUFFIXES = (".jsonl", ".txt", ".parquet")
FINEWEB = ("HuggingFaceFW/fineweb-edu", "sample-10BT")


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned integer type that holds every token id."""
    for dt in (np.uint8, np.uint16, np.uint32):
        if vocab_size <= np.iinfo(dt).max + 1:
            return np.dtype(dt)
    raise UserError(f"vocab size {vocab_size} does not fit 32 bits")


# ---------------------------------------------------------------------------------------------
# Sources: each yields (split or None, text); None lets the hash decide.

def local_files(path: Path) -> list[Path]:
    if not path.exists():
        raise UserError(f"--dataset {path} does not exist (give a file or folder of "
                        f"{'/'.join(TEXT_SUFFIXES)} files, or 'fineweb-edu')")
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    files = [f for f in files if f.suffix in TEXT_SUFFIXES]
    if not files:
        raise UserError(f"no {'/'.join(TEXT_SUFFIXES)} files in {path}")
    return files


def read_file(path: Path):
    if path.suffix == ".txt":
        yield path.read_text(encoding="utf-8", errors="replace")
    elif path.suffix == ".jsonl":
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        yield json.loads(line)["text"]
                    except (json.JSONDecodeError, KeyError, TypeError) as e:
                        raise UserError(f"{path}:{n} is not a JSON object with a 'text' field") from e
    else:
        import pyarrow.parquet as pq
        for batch in pq.ParquetFile(path).iter_batches(columns=["text"], batch_size=1024):
            yield from batch.column("text").to_pylist()


def local_documents(files: list[Path]):
    # validation files first, so that a --tokens cap on training text never starves them
    for f in sorted(files, key=lambda f: not f.name.startswith("val")):
        split = "val" if f.name.startswith("val") else None
        for text in read_file(f):
            yield split, text


def fineweb_documents():
    try:
        from datasets import load_dataset
        ds = load_dataset(FINEWEB[0], name=FINEWEB[1], split="train", streaming=True)
        for row in ds:
            yield None, row["text"]
    except ImportError as e:
        raise UserError("--dataset fineweb-edu needs `pip install datasets`") from e
    except (ConnectionError, OSError) as e:
        raise UserError(f"cannot stream {FINEWEB[0]} from the Hugging Face hub ({type(e).__name__}); "
                        "offline, pass --dataset PATH with local .jsonl/.txt/.parquet files") from e


# ---------------------------------------------------------------------------------------------

_tokenizer = None


def _encode(item):
    """Worker: (split, text) -> (split, text's hash fraction, token ids with a leading EOT)."""
    global _tokenizer
    split, text = item
    if _tokenizer is None:
        _tokenizer = get_tokenizer(_encode.tokenizer_name)
    h = int.from_bytes(hashlib.blake2b(text.encode("utf-8", "replace"), digest_size=8).digest(), "big")
    return split, h / 2**64, [_tokenizer.eot] + _tokenizer.encode(text)


def _init_worker(name):
    _encode.tokenizer_name = name


def fingerprint(args, files) -> dict:
    """What the output depends on: re-running with the same fingerprint is skipped."""
    inputs = [[str(f), f.stat().st_size, int(f.stat().st_mtime)] for f in files] if files else args.dataset
    return {"dataset": args.dataset, "inputs": inputs, "tokenizer": args.tokenizer,
            "tokens": args.tokens, "val_fraction": args.val_fraction, "val_tokens": args.val_tokens}


def up_to_date(out: Path, fp: dict) -> bool:
    try:
        meta = json.loads((out / "meta.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    sizes_ok = all((out / f"{s}.bin").is_file() and (out / f"{s}.bin").stat().st_size ==
                   meta[f"{s}_tokens"] * np.dtype(meta["dtype"]).itemsize for s in ("train", "val"))
    return meta.get("fingerprint") == fp and sizes_ok


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


def prepare(args):
    """Under a lock on the output folder: two runs that prepare the same folder at once (the two
    streams of experiments/reproduce.sh) would write over each other; the second waits, then finds
    the folder up to date."""
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        lock = open(out / ".lock", "w")
    except OSError as e:
        raise UserError(f"cannot write to {out}: {e.strerror}") from e
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        prepare_unlocked(args, out)


def prepare_unlocked(args, out: Path):
    files = None if args.dataset == "fineweb-edu" else local_files(Path(args.dataset))
    fp = fingerprint(args, files)
    if up_to_date(out, fp):
        print(f"{out} is up to date (same inputs and settings); nothing to do")
        return
    tok = get_tokenizer(args.tokenizer)  # fails early, in the main process, if unavailable
    dtype = token_dtype(tok.vocab_size)
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "meta.json").unlink(missing_ok=True)  # the old meta no longer describes the bins
        tmp = {s: open(out / f".{s}.bin.tmp", "wb") for s in ("train", "val")}
    except OSError as e:
        raise UserError(f"cannot write to {out}: {e.strerror}") from e
    counts = {"train": 0, "val": 0}
    docs = local_documents(files) if files else fineweb_documents()
    t0 = time.time()
    bar = tqdm(total=args.tokens or None, unit="tok", unit_scale=True, desc="train tokens",
               disable=None)  # no bar when the output is not a terminal (logs, tests)
    full = False
    # whole chunks through pool.map: no task is left in flight when the --tokens cap stops us
    with Pool(args.workers, initializer=_init_worker, initargs=(args.tokenizer,)) as pool:
        while not full and (chunk := list(itertools.islice(docs, 1024))):
            for split, h, ids in pool.map(_encode, chunk, chunksize=32):
                split = split or ("val" if h < args.val_fraction else "train")
                if split == "val" and counts["val"] >= args.val_tokens:
                    continue  # a val document never moves to train: the splits stay disjoint
                tmp[split].write(np.asarray(ids, dtype=dtype).tobytes())
                counts[split] += len(ids)
                if split == "train":
                    bar.update(len(ids))
                    full = bool(args.tokens) and counts["train"] >= args.tokens
                    if full:
                        break
    bar.close()
    for f in tmp.values():
        f.close()
    if counts["train"] == 0 or counts["val"] == 0:
        raise UserError(f"no {'training' if counts['train'] == 0 else 'validation'} text in "
                        f"{args.dataset}; give more documents or raise --val_fraction")
    for s in tmp:
        os.replace(out / f".{s}.bin.tmp", out / f"{s}.bin")
    meta = {"tokenizer": tok.name, "vocab_size": tok.vocab_size, "eot": tok.eot, "dtype": dtype.name,
            "train_tokens": counts["train"], "val_tokens": counts["val"],
            "source": args.dataset if files is None else [str(f) for f in files],
            "sha256": {s: sha256(out / f"{s}.bin") for s in tmp}, "fingerprint": fp}
    write_json(out / "meta.json", meta)
    print(f"wrote {counts['train']:,} train and {counts['val']:,} val tokens ({dtype.name}) to {out} "
          f"in {time.time() - t0:.1f}s")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="fineweb-edu",
                   help="'fineweb-edu' (streams HuggingFaceFW/fineweb-edu, sample-10BT) or a local "
                        ".jsonl (with a 'text' field) / .txt / .parquet file or folder")
    p.add_argument("--tokenizer", default="gpt2", choices=["gpt2", "bytes"],
                   help="gpt2: tiktoken BPE (paper family); bytes: UTF-8 bytes (tiny family)")
    p.add_argument("--out", required=True, help="output folder for train.bin, val.bin, meta.json")
    p.add_argument("--tokens", type=int, default=0,
                   help="stop after this many training tokens (0: the whole source)")
    p.add_argument("--val_fraction", type=float, default=0.005,
                   help="share of documents held out for validation when the source has no val* files")
    p.add_argument("--val_tokens", type=int, default=10_000_000, help="cap on validation tokens")
    p.add_argument("--workers", type=int, default=os.cpu_count(), help="encoding processes")
    args = p.parse_args(argv)
    if args.tokens < 0 or args.val_tokens <= 0 or not 0 <= args.val_fraction < 1 or args.workers < 1:
        raise UserError("--tokens must be >= 0, --val_tokens > 0, --val_fraction in [0, 1), --workers >= 1")
    prepare(args)


if __name__ == "__main__":
    run_cli(main)
