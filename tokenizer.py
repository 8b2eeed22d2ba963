"""The tokenizers of the project: UTF-8 bytes (tiny families), GPT-2 BPE (paper and llama families),
and the byte-level BPEs of SmolLM2 and Llama 3 from their tokenizer.json (smollm2 and llama3.2
presets, imported SmolLM2 and Llama 3.x folders)."""
import os
from pathlib import Path

import numpy as np

from util import UserError


class Tokenizer:
    """What both tokenizers share: from token_bytes(i), the bytes token i stands for, a table of
    byte lengths."""
    vocab_size: int
    eot: int

    def byte_lengths(self) -> np.ndarray:
        """UTF-8 bytes of text each token id stands for, indexed by id (bits per byte divide by their
        sum). Counted per token, not by decoding text, so that a character split across tokens counts
        its true bytes; the document separator is no text and counts none."""
        lengths = np.array([len(self.token_bytes(i)) for i in range(self.vocab_size)], dtype=np.int64)
        lengths[self.eot] = 0
        return lengths


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes. The byte 0xFF never occurs in UTF-8, so it serves as the document separator."""
    name = "bytes"
    vocab_size = 256
    eot = 0xFF

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        parts = bytes(i for i in ids).split(bytes([self.eot]))
        return "<|endoftext|>".join(p.decode("utf-8", errors="replace") for p in parts)

    def token_bytes(self, i: int) -> bytes:
        """The byte itself; the separator shows as <|endoftext|>, as GPT-2's does."""
        return b"<|endoftext|>" if i == self.eot else bytes([i])


class GPT2Tokenizer(Tokenizer):
    """GPT-2 BPE through tiktoken; `<|endoftext|>` (50256) separates documents."""
    name = "gpt2"
    vocab_size = 50257
    eot = 50256

    def __init__(self):
        import tiktoken
        _default_tiktoken_cache()
        try:
            self.enc = tiktoken.get_encoding("gpt2")
        except Exception as e:  # tiktoken raises requests' errors when it cannot download
            raise UserError(
                "cannot load the GPT-2 BPE files (offline?): set TIKTOKEN_CACHE_DIR to a folder "
                f"that holds them, e.g. ../shared/tiktoken_cache ({type(e).__name__})") from e

    def encode(self, text: str) -> list[int]:
        return self.enc.encode_ordinary(text)

    def decode(self, ids) -> str:
        return self.enc.decode(list(ids))

    def token_bytes(self, i: int) -> bytes:
        """The bytes token i stands for: a GPT-2 token may hold part of a UTF-8 character."""
        return self.enc.decode_single_token_bytes(i)


def byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-level BPE writes byte b as one printable character: character -> byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, n = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:  # the others are shifted past 255, in order
            chars[chr(256 + n)] = b
            n += 1
    return chars


# the byte-level BPEs read from a tokenizer.json: name -> the special token that separates documents
JSON_TOKENIZERS = {"smollm2": "<|endoftext|>", "llama3": "<|end_of_text|>"}
TOKENIZER_NAMES = ("bytes", "gpt2", *JSON_TOKENIZERS)


class JSONTokenizer(Tokenizer):
    """A byte-level BPE from a Hugging Face tokenizer.json (SmolLM2's, Llama 3's), through the
    `tokenizers` package; JSON_TOKENIZERS[name] separates documents. The file is
    TOKENIZERS/<name>/tokenizer.json, TOKENIZERS being $PGF_TOKENIZERS or ../shared/tokenizer beside
    the repository: copy the imported folder's tokenizer.json there."""

    def __init__(self, name: str):
        path = tokenizers_dir() / name / "tokenizer.json"
        if not path.is_file():
            raise UserError(f"tokenizer {name!r} needs {path} (e.g. the tokenizer.json of the folder "
                            "export_hf.py imported); set PGF_TOKENIZERS to the folder holding "
                            f"{name}/tokenizer.json")
        from tokenizers import Tokenizer as HFTokenizer
        self.name, self.tok = name, HFTokenizer.from_file(str(path))
        self.vocab_size = self.tok.get_vocab_size()
        self.eot = self.tok.token_to_id(JSON_TOKENIZERS[name])
        if self.eot is None:
            raise UserError(f"{path} has no {JSON_TOKENIZERS[name]} token to separate documents")
        self.specials = {t.content for t in self.tok.get_added_tokens_decoder().values()}
        self.alphabet = byte_level_alphabet()

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=False)

    def token_bytes(self, i: int) -> bytes:
        """A special token's text; any other token's characters mapped back to their bytes."""
        token = self.tok.id_to_token(i)
        if token in self.specials:
            return token.encode("utf-8")
        return bytes(self.alphabet[c] for c in token)


def tokenizers_dir() -> Path:
    return Path(os.environ.get("PGF_TOKENIZERS") or Path(__file__).resolve().parent.parent / "shared" / "tokenizer")


def get_tokenizer(name: str):
    if name == "bytes":
        return ByteTokenizer()
    if name == "gpt2":
        return GPT2Tokenizer()
    if name in JSON_TOKENIZERS:
        return JSONTokenizer(name)
    raise UserError(f"unknown tokenizer {name!r}; choose one of {', '.join(TOKENIZER_NAMES)}")


def _default_tiktoken_cache():
    """Point tiktoken at ../shared/tiktoken_cache when it exists and the user set nothing."""
    shared = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "shared", "tiktoken_cache")
    if "TIKTOKEN_CACHE_DIR" not in os.environ and os.path.isdir(shared):
        os.environ["TIKTOKEN_CACHE_DIR"] = shared
