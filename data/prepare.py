"""
Tokenize a text corpus into train.bin / val.bin (+ meta.json) for train.py and evaluate.py.

    python data/prepare.py --out data/openstax_bytes --dataset ../shared/data/corpus/openstax --tokenizer bytes
    python data/prepare.py --out data/fineweb_gpt2 --tokens 10_000_000_000      # FineWeb-Edu, streamed

Documents are streamed (bounded memory whatever the input size), encoded on all cores, and each is
preceded by the tokenizer's end-of-text token, as GPT-2 was trained. The validation split is given
by the source (files named val*) or else chosen by a hash of each document's text, so the splits
are disjoint and the same on every run. A source of one or a few documents (a book as one .txt)
that leaves a split empty this way is split inside each document instead: its last --val_fraction
of characters, cut at a line break, go to validation. The token files are written under temp
names and renamed (none is left behind by a failed run); meta.json comes last and marks a
finished run: re-running with the same inputs does nothing.
"""
import argparse
import codecs
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
from data import check_split, read_meta  # noqa: E402
from tokenizer import TOKENIZER_NAMES, get_tokenizer  # noqa: E402
from util import ArgumentParser, UserError, file_sha256, run_cli, write_error, write_json  # noqa: E402

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


def read_file(path: Path, encoding: str = "utf-8"):
    """The documents of one file, decoded strictly: bytes that are not `encoding` text, a record
    without a string 'text', or a lone surrogate stop with the file and line (or row)."""
    if path.suffix == ".txt":
        raw = path.read_bytes()
        try:
            yield document(raw.decode(encoding), path)
        except UnicodeDecodeError as e:
            raise not_text(path, raw[:e.start].count(b"\n") + 1, e, encoding) from e
    elif path.suffix == ".jsonl":
        with open(path, encoding=encoding) as f:
            n = 0
            try:
                for n, line in enumerate(f, 1):
                    if line.strip():
                        yield document(json_text(line, f"{path}:{n}"), f"{path}:{n}")
            except UnicodeDecodeError as e:
                raise not_text(path, n + 1, e, encoding) from e
    else:
        import pyarrow.parquet as pq
        row = 0
        for batch in pq.ParquetFile(path).iter_batches(columns=["text"], batch_size=1024):
            for text in batch.column("text").to_pylist():
                row += 1
                yield document(text, f"{path} row {row}")


def json_text(line: str, where: str):
    try:
        return json.loads(line)["text"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise UserError(f"{where} is not a JSON object with a 'text' field") from e


def document(text, where) -> str:
    """text, if it is a string the tokenizers can encode; else one line saying where and what it is."""
    if not isinstance(text, str):
        raise UserError(f"{where}: 'text' is {type(text).__name__}, not a string")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise UserError(f"{where}: the text holds a lone surrogate (U+{ord(text[e.start]):04X}) at character "
                        f"{e.start}, which is not a Unicode character; fix the record") from e
    return text


def not_text(path: Path, line: int, e: UnicodeDecodeError, encoding: str) -> UserError:
    return UserError(f"{path}:{line} is not {encoding} text (byte 0x{e.object[e.start]:02x}); give its "
                     f"--encoding (e.g. latin-1) or convert it to UTF-8")


def split_document(text: str, val_fraction: float) -> tuple[str, str]:
    """(train part, val part) of one document: its last val_fraction of characters, cut at the last
    line break (else space) that leaves validation at most twice that share."""
    if len(text) < 2:
        return text, ""
    cut = min(max(round(len(text) * (1 - val_fraction)), 1), len(text) - 1)
    lowest = max(1, 2 * cut - len(text))
    for sep in ("\n", " "):
        if (at := text.rfind(sep, lowest, cut + 1)) > 0:
            return text[:at], text[at:]
    return text[:cut], text[cut:]


def split_inside(docs, val_fraction: float):
    """Documents as (split, text) pairs, each split in two by split_document."""
    for _, text in docs:
        train, val = split_document(text, val_fraction)
        yield "train", train
        if val:
            yield "val", val


def local_documents(files: list[Path], encoding: str = "utf-8"):
    # validation files first, so that a --tokens cap on training text never starves them
    for f in sorted(files, key=lambda f: not f.name.startswith("val")):
        split = "val" if f.name.startswith("val") else None
        for text in read_file(f, encoding):
            yield split, text


def fineweb_documents(tokenizer: str):
    # run_family.sh takes no --dataset: a local corpus goes through a prepared folder and DATA=
    local = ("or prepare local .jsonl/.txt/.parquet files: `python data/prepare.py --dataset PATH "
             f"--tokenizer {tokenizer} --out data/mine`, then `DATA=data/mine bash run_family.sh`")
    try:
        from datasets import load_dataset
        ds = load_dataset(FINEWEB[0], name=FINEWEB[1], split="train", streaming=True)
        for row in ds:
            yield None, row["text"]
    except ImportError as e:
        raise UserError(f"--dataset fineweb-edu needs `pip install datasets`; {local}") from e
    except (ConnectionError, OSError) as e:
        raise UserError(f"cannot stream {FINEWEB[0]} from the Hugging Face hub ({type(e).__name__}); "
                        f"offline, {local}") from e


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
            "tokens": args.tokens, "val_fraction": args.val_fraction, "val_tokens": args.val_tokens,
            # only when given: folders prepared before --encoding existed stay up to date
            **({"encoding": args.encoding} if args.encoding != "utf-8" else {})}


def up_to_date(out: Path, fp: dict) -> bool:
    """Same inputs and settings, and token files that still match meta.json (as train.py checks them)."""
    try:
        meta = read_meta(out)
        return meta.get("fingerprint") == fp and all(check_split(out, s, meta) for s in ("train", "val"))
    except (UserError, OSError):
        return False


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


def encode_splits(docs, args, out: Path, dtype) -> dict:
    """Encode (split, text) documents into out/.{train,val}.bin.tmp; the token count of each split."""
    counts = {"train": 0, "val": 0}
    try:
        tmp = {s: open(out / f".{s}.bin.tmp", "wb") for s in counts}
    except OSError as e:
        raise UserError(f"cannot write to {out}: {e.strerror}") from e
    bar = tqdm(total=args.tokens or None, unit="tok", unit_scale=True, desc="train tokens",
               disable=None)  # no bar when the output is not a terminal (logs, tests)
    full = False
    # whole chunks through pool.map: no task is left in flight when the --tokens cap stops us
    with Pool(args.workers, initializer=_init_worker, initargs=(args.tokenizer,)) as pool, \
            tmp["train"], tmp["val"]:
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
    return counts


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
    except OSError as e:
        raise UserError(f"cannot write to {out}: {e.strerror}") from e
    documents = (lambda: local_documents(files, args.encoding)) if files else (lambda: fineweb_documents(args.tokenizer))
    by_hash = args.val_fraction > 0 and not any(f.name.startswith("val") for f in files or [])
    t0 = time.time()
    try:
        counts = encode_splits(documents(), args, out, dtype)
        inside = by_hash and 0 in counts.values()
        if inside:
            print(f"the split by document left {'validation' if counts['val'] == 0 else 'training'} "
                  f"empty (too few documents in {args.dataset}): splitting inside each document "
                  f"instead, its last {args.val_fraction:.1%} of characters to validation")
            counts = encode_splits(split_inside(documents(), args.val_fraction), args, out, dtype)
        if 0 in counts.values():
            raise UserError(f"no {'training' if counts['train'] == 0 else 'validation'} text in "
                            f"{args.dataset}; give more documents or raise --val_fraction")
        for s in counts:
            os.replace(out / f".{s}.bin.tmp", out / f"{s}.bin")
    except OSError as e:  # a full disk, most likely: one line, and the temp files go
        raise write_error(out / "train.bin", e, str(out / ".train.bin.tmp")) from e
    finally:  # a failed run leaves no temp files behind
        for s in ("train", "val"):
            (out / f".{s}.bin.tmp").unlink(missing_ok=True)
    meta = {"tokenizer": tok.name, "vocab_size": tok.vocab_size, "eot": tok.eot, "dtype": dtype.name,
            "train_tokens": counts["train"], "val_tokens": counts["val"],
            "source": args.dataset if files is None else [str(f) for f in files],
            "split": "inside documents" if inside else "by document",
            "sha256": {s: file_sha256(out / f"{s}.bin") for s in counts}, "fingerprint": fp}
    write_json(out / "meta.json", meta)
    print(f"wrote {counts['train']:,} train and {counts['val']:,} val tokens ({dtype.name}) to {out} "
          f"in {time.time() - t0:.1f}s")


def main(argv=None):
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="fineweb-edu",
                   help="'fineweb-edu' (streams HuggingFaceFW/fineweb-edu, sample-10BT) or a local "
                        ".jsonl (with a 'text' field) / .txt / .parquet file or folder")
    p.add_argument("--tokenizer", default="gpt2", choices=TOKENIZER_NAMES,
                   help="gpt2: tiktoken BPE (paper and llama families); bytes: UTF-8 bytes (tiny families); "
                        "smollm2, llama3: SmolLM2's or Llama 3's tokenizer.json, from "
                        "$PGF_TOKENIZERS/NAME/ (default ../shared/tokenizer/NAME/)")
    p.add_argument("--out", required=True, help="output folder for train.bin, val.bin, meta.json")
    p.add_argument("--tokens", type=int, default=0,
                   help="stop after this many training tokens (0: the whole source)")
    p.add_argument("--val_fraction", type=float, default=0.005,
                   help="share of documents held out for validation when the source has no val* files")
    p.add_argument("--val_tokens", type=int, default=10_000_000, help="cap on validation tokens")
    p.add_argument("--workers", type=int, default=os.cpu_count(), help="encoding processes")
    p.add_argument("--encoding", default="utf-8",
                   help="text encoding of local .txt and .jsonl files (default utf-8; e.g. latin-1); bytes "
                        "that are not text in it stop with the file and line")
    args = p.parse_args(argv)
    try:
        codecs.lookup(args.encoding)
    except LookupError:
        raise UserError(f"--encoding {args.encoding} is not a text encoding Python knows (e.g. utf-8, latin-1)") from None
    if args.tokens < 0 or args.val_tokens <= 0 or not 0 <= args.val_fraction < 1 or args.workers < 1:
        raise UserError("--tokens must be >= 0, --val_tokens > 0, --val_fraction in [0, 1), --workers >= 1")
    prepare(args)


if __name__ == "__main__":
    run_cli(main)
