"""The two tokenizers of the project: UTF-8 bytes (tiny family) and GPT-2 BPE (paper family)."""
import os

from util import UserError


class ByteTokenizer:
    """UTF-8 bytes. The byte 0xFF never occurs in UTF-8, so it serves as the document separator."""
    name = "bytes"
    vocab_size = 256
    eot = 0xFF

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        parts = bytes(i for i in ids).split(bytes([self.eot]))
        return "<|endoftext|>".join(p.decode("utf-8", errors="replace") for p in parts)


class GPT2Tokenizer:
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
