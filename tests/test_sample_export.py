"""sample.py (generation, streaming, --family) and export_hf.py (the GPT-2 export must compute our
function exactly). Models are tiny with random weights — biases and LayerNorm gains included, so
that a misplaced tensor cannot hide behind init's zeros and ones."""
import os
import random
from pathlib import Path

import pytest
import torch

import checkpoint
import sample
from conftest import SHARED, assert_user_error, need_shared, run_script
from model import GPT, GPTConfig
from sample import family_members, generate, stream_text
from tokenizer import get_tokenizer
from util import UserError

SHARED_GPT2 = SHARED / "tokenizer" / "gpt2"


def random_model(tokenizer: str) -> GPT:
    vocab = 50304 if tokenizer == "gpt2" else 256
    model = GPT(GPTConfig(n_layer=2, n_head=2, head_dim=16, d_ff=64, vocab_size=vocab, block_size=64,
                          tokenizer=tokenizer), use_kernels=False)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model.eval()


def save_model(model, path) -> Path:
    checkpoint.save(path, checkpoint.make_checkpoint(model))
    return Path(path)


def sample_tokens(model, prompt, n, **kw):
    return torch.stack(list(generate(model, prompt, n, **kw)), dim=1)


# ---------------------------------------------------------------------------------------------
# generation

@pytest.fixture(scope="module")
def byte_model():
    return random_model("bytes")


def test_fixed_seed_reproduces_and_seeds_differ(byte_model):
    prompt = torch.randint(0, 256, (2, 5))
    seed = random.randrange(2**31)
    draw = lambda s: sample_tokens(byte_model, prompt, 32, temperature=1.0,  # noqa: E731
                                   generator=torch.Generator().manual_seed(s))
    a, b, c = draw(seed), draw(seed), draw(seed + 1)
    assert a.shape == (2, 32)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.fast
def test_greedy_is_argmax_and_top_k_1_is_greedy(byte_model):
    prompt = torch.randint(0, 256, (3, 7))
    greedy = sample_tokens(byte_model, prompt, 10, temperature=0)
    top1 = sample_tokens(byte_model, prompt, 10, temperature=1.5, top_k=1)
    assert torch.equal(greedy, top1)
    with torch.no_grad():  # the first token, by hand
        assert torch.equal(greedy[:, 0], byte_model(prompt)[0][:, -1].argmax(-1))


def test_padding_ids_are_never_sampled(byte_model):
    out = sample_tokens(byte_model, torch.randint(0, 256, (4, 3)), 30, temperature=3.0, n_vocab=5)
    assert out.max() < 5


def test_context_is_left_cropped_to_block_size(byte_model):
    long = torch.randint(0, 256, (1, 100))  # block_size is 64
    a = sample_tokens(byte_model, long, 8, temperature=0)
    b = sample_tokens(byte_model, long[:, -64:], 8, temperature=0)
    assert torch.equal(a, b)


def test_streamed_bytes_join_to_decode():
    tok = get_tokenizer("bytes")
    text = "".join(random.choice(["a", " ", "é", "☃", "😀", "ж"]) for _ in range(50))
    ids = tok.encode(text) + [tok.eot] + [random.randrange(256) for _ in range(40)]  # junk bytes too
    assert "".join(stream_text(tok, ids)) == tok.decode(ids)
    # a 3-byte character appears whole once its last byte arrives
    assert list(stream_text(tok, "☃".encode())) == ["", "", "☃", ""]


def test_streamed_gpt2_joins_to_decode():
    tok = get_tokenizer("gpt2")
    ids = tok.encode("naïve café ☃ 😀 " * 3) + [random.randrange(50257) for _ in range(40)]
    assert "".join(stream_text(tok, ids)) == tok.decode(ids)


def test_family_members_in_size_order_without_expanded(tmp_path):
    for name in ["ckpt_250k.pt", "ckpt_20k.pt", "ckpt_50k_expanded.pt", "notes.pt", "ckpt_2b.pt"]:
        (tmp_path / name).touch()
    assert [p.name for p in family_members(tmp_path)] == ["ckpt_2b.pt", "ckpt_20k.pt", "ckpt_250k.pt"]
    with pytest.raises(UserError):
        family_members(tmp_path / "empty_or_missing")


def test_sample_cli_streams_the_greedy_continuation(byte_model, tmp_path, capsys):
    ckpt = save_model(byte_model, tmp_path / "ckpt_20k.pt")
    prompt = "Héllo"
    expected = sample_tokens(byte_model, torch.tensor([list(prompt.encode())]), 20, temperature=0)[0]
    proc = run_script("sample.py", "--ckpt", ckpt, "--prompt", prompt, "--max_new_tokens", 20,
                      "--temperature", 0, "--device", "cpu", env={**os.environ, "PYTHONIOENCODING": "utf-8"})
    assert proc.returncode == 0, proc.stderr
    header, body = proc.stdout.split("\n", 1)
    assert header.startswith("---") and "ckpt_20k.pt" in header
    assert body.rstrip("\n") == prompt + get_tokenizer("bytes").decode(expected.tolist())
    sample.main(["--family", str(tmp_path), "--max_new_tokens", "5", "--num_samples", "2"])
    assert capsys.readouterr().out.count("ckpt_20k.pt") == 2


def test_sample_cli_bad_input(tmp_path):
    assert_user_error(run_script("sample.py", "--ckpt", tmp_path / "missing.pt"), "does not exist")
    with pytest.raises(UserError, match="no family checkpoints"):
        sample.main(["--family", str(tmp_path)])
    with pytest.raises(UserError, match="--temperature"):
        sample.main(["--ckpt", "x.pt", "--temperature", "-1"])


# ---------------------------------------------------------------------------------------------
# export to Hugging Face transformers

@pytest.fixture(scope="module", params=["gpt2", "bytes"])
def exported(request, tmp_path_factory):
    """(our model, the exported folder, the HF model loaded from it)."""
    transformers = pytest.importorskip("transformers", reason="transformers is optional (export only)")
    import export_hf
    tokenizer_dir = None
    if request.param == "gpt2":
        tokenizer_dir = need_shared("tokenizer/gpt2")
    model = random_model(request.param)
    tmp = tmp_path_factory.mktemp(request.param)
    export_hf.export(save_model(model, tmp / "ckpt.pt"), tmp / "hf", tokenizer_dir)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp / "hf").eval()
    return model, tmp / "hf", hf


def test_exported_logits_equal_ours(exported):
    model, _, hf = exported
    assert type(hf).__name__ == "GPT2LMHeadModel"
    # transformers 5 leaves a head untied on load when it differs from wte whatever the config says;
    # tie_weights() (called by resize_token_embeddings, fine-tuning tools, transformers 4 on load)
    # follows the config: it must leave ours untied
    hf.tie_weights()
    idx = torch.randint(0, model.cfg.vocab_size, (3, model.cfg.block_size))
    with torch.no_grad():
        ours, theirs = model(idx)[0], hf(idx).logits
    assert (ours - theirs).abs().max() <= 1e-4 * ours.abs().max()
    # the head stayed untied: it holds our head, not a copy of the embedding
    assert torch.equal(hf.lm_head.weight, model.head.weight)
    assert not torch.equal(hf.lm_head.weight, hf.transformer.wte.weight)


def test_greedy_generation_agrees_token_for_token(exported):
    model, _, hf = exported
    prompt = torch.randint(0, model.cfg.vocab_size, (1, 8))
    ours = sample_tokens(model, prompt, 32, temperature=0)
    hf.generation_config.eos_token_id = None  # random weights may pick <|endoftext|>: don't stop there
    theirs = hf.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                         max_new_tokens=32, min_new_tokens=32)[:, 8:]
    assert torch.equal(ours, theirs)


def test_exported_tokenizer_gives_our_ids(exported):
    from transformers import AutoTokenizer
    model, folder, _ = exported
    ours, theirs = get_tokenizer(model.cfg.tokenizer), AutoTokenizer.from_pretrained(folder)
    text = "".join(random.choice(["The", " cat", "  ", "é", "☃", "😀", "\n", "'s", "42"]) for _ in range(60))
    ids = theirs(text)["input_ids"]
    assert ids == ours.encode(text)
    assert theirs.decode(ids) == text
    assert theirs.eos_token_id == ours.eot and theirs.model_max_length == model.cfg.block_size


def test_export_writes_safetensors_and_untied_config(exported):
    import json
    from safetensors.torch import load_file
    model, folder, _ = exported
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["tie_word_embeddings"] is False and cfg["vocab_size"] == model.cfg.vocab_size
    weights = load_file(folder / "model.safetensors")
    assert len(weights) == len(model.state_dict())
    assert torch.equal(weights["transformer.h.1.attn.c_attn.weight"], model.blocks[1].attn.qkv.weight.t())
    assert (folder / "generation_config.json").is_file()


def test_export_cli_bad_input(tmp_path):
    import export_hf
    assert_user_error(run_script("export_hf.py", "--ckpt", tmp_path / "missing.pt", "--out", tmp_path / "o"),
                      "does not exist")
    ckpt = save_model(random_model("bytes"), tmp_path / "ckpt_20k.pt")
    assert_user_error(run_script("export_hf.py", "--ckpt", ckpt, "--out", tmp_path / "o",
                                 "--tokenizer_dir", SHARED_GPT2), "byte-level")
    pytest.importorskip("transformers", reason="transformers is optional (export only)")
    (tmp_path / "a_file").touch()  # as root, permissions do not stop a write: a file blocks the folder
    with pytest.raises(UserError, match="cannot write"):
        export_hf.main(["--ckpt", str(ckpt), "--out", str(tmp_path / "a_file")])


BLOCK_TRITON = """import runpy, sys
class NoTriton:  # a CPU user's environment: requirements.txt + transformers, no triton
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "triton":
            raise ImportError("No module named 'triton'")
sys.meta_path.insert(0, NoTriton())
sys.argv = ["export_hf.py", *sys.argv[1:]]
runpy.run_path("export_hf.py", run_name="__main__")
"""


def test_export_works_without_triton(tmp_path):
    """transformers probes for a package named `kernels`; the repo's Triton module must not answer
    to that name (it imports triton, which a CPU user does not have)."""
    pytest.importorskip("transformers", reason="transformers is optional (export only)")
    ckpt = save_model(random_model("bytes"), tmp_path / "ckpt_20k.pt")
    proc = run_script("-c", BLOCK_TRITON, "--ckpt", ckpt, "--out", tmp_path / "hf")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "hf" / "model.safetensors").is_file()
