import json
import os

import numpy as np
import pytest

from conftest import assert_user_error, need_shared, run_script
from data import open_split
from tokenizer import get_tokenizer
from util import UserError

TEXTS = ["Hello, world!", "naïve café — 日本語 🙂", "line\nbreaks\tand  spaces ", "", "<|endoftext|> literal"]


@pytest.mark.fast
def test_byte_round_trip():
    tok = get_tokenizer("bytes")
    for t in TEXTS:
        assert tok.decode(tok.encode(t)) == t
        assert tok.eot not in tok.encode(t)  # 0xFF is never a UTF-8 byte: a safe separator


def test_gpt2_round_trip(monkeypatch):
    cache = need_shared("tiktoken_cache")
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    tok = get_tokenizer("gpt2")
    assert tok.encode("hello world") == [31373, 995]
    for t in TEXTS:
        assert tok.decode(tok.encode(t)) == t


def split_at_eot(tokens, eot) -> list[list[int]]:
    """Split a token file back into its documents, in order (each was preceded by EOT)."""
    cuts = np.flatnonzero(np.asarray(tokens) == eot).tolist() + [len(tokens)]
    return [tokens[a + 1:b].tolist() for a, b in zip(cuts, cuts[1:])]


def docs_of(tokens, eot):
    return {tuple(d) for d in split_at_eot(tokens, eot)}


def write_corpus(path, n=400):
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "ητα", "θ"]
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"text": f"doc {i}: " + " ".join(rng.choice(words, 30))}) + "\n")


def test_prepare_hash_split_is_disjoint_and_rerun_skips(tmp_path):
    write_corpus(tmp_path / "corpus.jsonl")
    out = tmp_path / "out"
    args = ["data/prepare.py", "--dataset", tmp_path / "corpus.jsonl", "--tokenizer", "bytes",
            "--out", out, "--val_fraction", "0.1", "--workers", "2"]
    proc = run_script(*args)
    assert proc.returncode == 0, proc.stderr
    train, meta = open_split(out, "train")
    val, _ = open_split(out, "val")
    assert meta["dtype"] == "uint8" and meta["tokenizer"] == "bytes"
    tr, va = docs_of(train, meta["eot"]), docs_of(val, meta["eot"])
    assert len(tr) + len(va) == 400 and 10 < len(va) < 80 and not tr & va
    before = (out / "train.bin").stat().st_mtime_ns
    again = run_script(*args)
    assert "up to date" in again.stdout and (out / "train.bin").stat().st_mtime_ns == before


def test_prepare_openstax_uses_its_val_file(byte_data):
    train, meta = open_split(byte_data, "train")
    val, _ = open_split(byte_data, "val")
    assert meta["train_tokens"] >= 4_000_000 and len(val) > 1_000_000
    tok = get_tokenizer("bytes")
    val_doc = tok.decode(val[1:2000].tolist())
    assert val_doc not in tok.decode(train[:3_000_000].tolist())


def test_prepare_gpt2_uint16(tmp_path, monkeypatch):
    cache = need_shared("tiktoken_cache")
    write_corpus(tmp_path / "c.jsonl", 50)
    proc = run_script("data/prepare.py", "--dataset", tmp_path / "c.jsonl", "--tokenizer", "gpt2",
                      "--out", tmp_path / "o", "--val_fraction", "0.2",
                      env={**__import__("os").environ, "TIKTOKEN_CACHE_DIR": str(cache)})
    assert proc.returncode == 0, proc.stderr
    train, meta = open_split(tmp_path / "o", "train")
    assert meta["dtype"] == "uint16" and meta["eot"] == 50256 and train.max() < 50257


@pytest.mark.parametrize("case", ["missing", "empty_folder", "bad_json"])
def test_prepare_bad_input(tmp_path, case):
    src = tmp_path / "src"
    if case == "empty_folder":
        src.mkdir()
    elif case == "bad_json":
        src.write_text("not json\n")
        src = src.rename(tmp_path / "src.jsonl")
    proc = run_script("data/prepare.py", "--dataset", src, "--tokenizer", "bytes", "--out", tmp_path / "o")
    assert_user_error(proc)


def test_two_prepares_of_one_folder_at_once(openstax, tmp_path):
    """The second waits for the first (a lock on the folder), then finds it up to date."""
    import subprocess
    import sys

    from conftest import ROOT
    out = tmp_path / "d"
    cmd = [sys.executable, "data/prepare.py", "--dataset", str(openstax), "--tokenizer", "bytes", "--out", str(out),
           "--tokens", "200000"]
    procs = [subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert sorted("up to date" in o for o, _ in outs) == [False, True], outs
    meta = json.loads((out / "meta.json").read_text())
    assert (out / "train.bin").stat().st_size == meta["train_tokens"] and not list(out.glob(".*.tmp"))


def prepare_small(tmp_path, src, *extra):
    out = tmp_path / "out"
    proc = run_script("data/prepare.py", "--dataset", src, "--tokenizer", "bytes", "--out", out,
                      "--workers", "1", *extra)
    assert proc.returncode == 0, proc.stderr
    return proc, out


def parts_of(out):
    """(train documents, val documents) as text, in file order."""
    tok = get_tokenizer("bytes")
    (train, meta), (val, _) = open_split(out, "train"), open_split(out, "val")
    assert meta["split"] == "inside documents"
    return [tok.decode(d) for d in split_at_eot(train, tok.eot)], [tok.decode(d) for d in split_at_eot(val, tok.eot)]


def test_one_book_is_split_inside_for_validation(tmp_path):
    """A single .txt (one document) gets a validation split: its end, cut at a line break."""
    book = "\n".join(f"Line {i} of the book, with a few words in it." for i in range(2000))
    (tmp_path / "book.txt").write_text(book)
    proc, out = prepare_small(tmp_path, tmp_path / "book.txt")
    assert "splitting inside each document" in proc.stdout
    train, val = parts_of(out)
    assert len(train) == len(val) == 1 and train[0] + val[0] == book
    assert val[0].startswith("\n") and 0.005 <= len(val[0]) / len(book) <= 0.01  # its share, at most twice
    again = tmp_path / "again"
    assert run_script("data/prepare.py", "--dataset", tmp_path / "book.txt", "--tokenizer", "bytes",
                      "--out", again, "--workers", "1").returncode == 0
    assert all((out / f).read_bytes() == (again / f).read_bytes() for f in ("train.bin", "val.bin"))


@pytest.mark.fast
def test_three_line_jsonl_is_a_corpus(tmp_path):
    texts = [f"document {i}: " + " ".join(["word"] * (30 + i)) for i in range(3)]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    proc, out = prepare_small(tmp_path, tmp_path / "c.jsonl", "--val_fraction", "0.1")
    train, val = parts_of(out)
    assert [a + b for a, b in zip(train, val)] == texts and all(v.startswith(" ") for v in val)


def test_text_in_another_encoding_needs_it_named(tmp_path):
    """Latin-1 bytes are not UTF-8: refused with the file and line, read as text with --encoding
    latin-1 (no U+FFFD replaces them); an edited token file is prepared again, not taken as up to date."""
    book = "\n".join(["caf\u00e9 au lait, cr\u00e8me br\u00fbl\u00e9e"] * 400)
    (tmp_path / "book.txt").write_bytes(book.encode("latin-1"))
    refused = run_script("data/prepare.py", "--dataset", tmp_path / "book.txt", "--tokenizer", "bytes",
                         "--out", tmp_path / "o", "--workers", "1")
    assert_user_error(refused, f"{tmp_path / 'book.txt'}:1 is not utf-8 text (byte 0xe9)", "--encoding")
    proc, out = prepare_small(tmp_path, tmp_path / "book.txt", "--encoding", "latin-1")
    train, val = parts_of(out)
    assert train[0] + val[0] == book
    with open(out / "train.bin", "r+b") as f:
        f.write(b"X")
    again = run_script("data/prepare.py", "--dataset", tmp_path / "book.txt", "--tokenizer", "bytes",
                       "--out", out, "--workers", "1", "--encoding", "latin-1")
    assert again.returncode == 0 and "up to date" not in again.stdout, again.stderr
    assert parts_of(out)[0] == train


def test_failed_prepare_leaves_no_temp_files(tmp_path):
    (tmp_path / "c.jsonl").write_text(json.dumps({"text": "one document"}) + "\n")
    proc = run_script("data/prepare.py", "--dataset", tmp_path / "c.jsonl", "--tokenizer", "bytes",
                      "--out", tmp_path / "o", "--val_fraction", "0", "--workers", "1")
    assert_user_error(proc, "no validation text")
    assert not list((tmp_path / "o").glob("*.tmp")) and not list((tmp_path / "o").glob(".*.tmp"))


def test_offline_fineweb_names_the_route_through_a_prepared_folder(tmp_path):
    pytest.importorskip("datasets")
    env = {**__import__("os").environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = run_script("data/prepare.py", "--tokenizer", "bytes", "--out", tmp_path / "o", "--workers", "1",
                      env=env)
    assert_user_error(proc, "python data/prepare.py --dataset PATH --tokenizer bytes --out data/mine",
                      "DATA=data/mine bash run_family.sh")
    assert not list((tmp_path / "o").glob(".*.tmp"))


def smollm2_like_tokenizer(folder, name="smollm2", eot="<|endoftext|>"):
    """A small byte-level BPE saved as folder/name/tokenizer.json, in SmolLM2's (or Llama 3's) format,
    eot its first token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=280, special_tokens=[eot, "<|im_start|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["the cell membrane and the cell wall", "naïve café, 東京"] * 50, trainer)
    (folder / name).mkdir(parents=True)
    tok.save(str(folder / name / "tokenizer.json"))


@pytest.mark.parametrize("name, eot", [("smollm2", "<|endoftext|>"), ("llama3", "<|end_of_text|>")])
def test_tokenizer_json_encodes_decodes_and_counts_bytes(tmp_path, monkeypatch, name, eot):
    pytest.importorskip("tokenizers")
    smollm2_like_tokenizer(tmp_path, name, eot)
    monkeypatch.setenv("PGF_TOKENIZERS", str(tmp_path))
    tok = get_tokenizer(name)
    assert tok.eot == 0 and tok.vocab_size == 280
    text = "the cell membrane: naïve café — 東京 <|im_start|>"
    ids = tok.encode(text)
    assert tok.decode(ids) == text and len(ids) < len(text.encode("utf-8"))
    assert tok.byte_lengths()[ids].sum() == len(text.encode("utf-8"))  # bits per byte stay exact
    monkeypatch.setenv("PGF_TOKENIZERS", str(tmp_path / "none"))
    with pytest.raises(UserError, match=f"{name}/tokenizer.json"):
        get_tokenizer(name)


def test_prepare_with_a_tokenizer_json(tmp_path, monkeypatch):
    """data/prepare.py --tokenizer smollm2: the documents come back from the token files."""
    pytest.importorskip("tokenizers")
    smollm2_like_tokenizer(tmp_path / "tok")
    monkeypatch.setenv("PGF_TOKENIZERS", str(tmp_path / "tok"))  # the script inherits it
    docs = [f"document {i}: the cell wall, naïve café" for i in range(40)]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    proc = run_script("data/prepare.py", "--dataset", tmp_path / "c.jsonl", "--tokenizer", "smollm2",
                      "--out", tmp_path / "o", "--val_fraction", 0.2, "--workers", 1)
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((tmp_path / "o" / "meta.json").read_text())
    assert (meta["tokenizer"], meta["vocab_size"], meta["eot"]) == ("smollm2", 280, 0)
    ids = np.concatenate([np.fromfile(tmp_path / "o" / f"{s}.bin", dtype=meta["dtype"]) for s in ("train", "val")])
    texts = get_tokenizer("smollm2").decode(ids.tolist()).split("<|endoftext|>")
    assert sorted(t for t in texts if t) == sorted(docs)
