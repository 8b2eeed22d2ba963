"""The two tokenizers of the project: UTF-8 bytes (tiny family) and GPT-2 BPE (paper family)."""
import os

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


def get_tokenizer(name: str):
    if name == "bytes":
        return ByteTokenizer()
    if name == "gpt2":
        return GPT2Tokenizer()
    raise UserError(f"unknown tokenizer {name!r}; choose 'bytes' or 'gpt2'")


def _default_tiktoken_cache():
    """Point tiktoken at ../shared/tiktoken_cache when it exists and the user set nothing."""
    shared = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "shared", "tiktoken_cache")
    if "TIKTOKEN_CACHE_DIR" not in os.environ and os.path.isdir(shared):
        os.environ["TIKTOKEN_CACHE_DIR"] = shared
