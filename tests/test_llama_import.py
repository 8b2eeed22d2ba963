"""export_hf.py with Llama members: a transformers LlamaForCausalLM imports with its logits, grows
exactly (FPI, integral and non-integral widths) and exports back to transformers with the same
logits. Small random Llamas made here stand in for SmolLM2's and Llama 3's folders, Llama 3.1/3.2's
scaled RoPE included."""
import pytest
import torch

import checkpoint
from expand import check_growth, expand
from model import GPT, PRESETS, GPTConfig, rope_inv_freq
from test_data import smollm2_like_tokenizer
from util import UserError

transformers = pytest.importorskip("transformers", reason="transformers is optional (export/import only)")
export_hf = pytest.importorskip("export_hf")


def random_llama(tied: bool, seed: int = 0, **shape):
    """A LlamaForCausalLM on bytes, 4 query heads sharing 2 key/value heads, every weight random
    (RMSNorm gains around 1), in eval mode."""
    cfg = transformers.LlamaConfig(**{
        "vocab_size": 256, "hidden_size": 32, "intermediate_size": 80, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64,
        "rms_norm_eps": 1e-5, "rope_parameters": {"rope_type": "default", "rope_theta": 5e5}, **shape},
        tie_word_embeddings=tied)
    torch.manual_seed(seed)
    hf = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            p.normal_(1.0 if "norm" in name else 0.0, 0.2 if "norm" in name else 0.1)
    return hf


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def source(request, tmp_path_factory):
    """(folder of a saved random Llama, the transformers model, its imported checkpoint)."""
    hf = random_llama(tied=request.param)
    folder = tmp_path_factory.mktemp("llama") / "hf"
    hf.save_pretrained(folder)
    checkpoint.save(folder.parent / "ckpt.pt", export_hf.import_hf(str(folder)))
    return folder, hf, checkpoint.load(folder.parent / "ckpt.pt")


def logits(model, idx):
    with torch.no_grad():
        out = model(idx)
    return out.logits if hasattr(out, "logits") else out[0]


def test_imported_logits_equal_transformers(source):
    _, hf, ckpt = source
    assert ckpt["config"] == GPTConfig(2, 4, 8, 80, 256, 64, "bytes", 1e-5, "rmsnorm", "swiglu", "rope", 5e5, 2, False)
    model = checkpoint.build_model(ckpt, use_kernels=False).eval()
    idx = torch.randint(0, 256, (3, 64))
    assert (logits(model, idx) - logits(hf, idx)).abs().max() <= 1e-5
    sd = ckpt["model"]  # untied, with the source's values
    assert torch.equal(sd["head.weight"], hf.lm_head.weight)
    assert sd["head.weight"].data_ptr() != sd["wte.weight"].data_ptr()
    assert ckpt["meta"]["origin"]["architecture"] == "LlamaForCausalLM"


def grow_and_export(ckpt, folder, groups, n_layer):
    """ckpt grown by FPI (query groups 2 -> groups, SwiGLU 80 -> 160, zero blocks to n_layer),
    exported to folder and read back by transformers."""
    target = GPTConfig(**{**ckpt["config"].to_dict(), "n_head": 2 * groups, "n_kv_head": groups,
                          "d_ff": 160, "n_layer": n_layer})
    checkpoint.save(folder / "grown.pt", expand(ckpt, target, method="fpi", depth="zero"))
    export_hf.main(["--ckpt", str(folder / "grown.pt"), "--out", str(folder / "hf")])
    back = transformers.AutoModelForCausalLM.from_pretrained(folder / "hf").eval()
    assert type(back).__name__ == "LlamaForCausalLM" and back.config.num_key_value_heads == groups
    return back


@pytest.mark.parametrize("groups, n_layer", [(4, 3), (3, 2)], ids=["2x", "1.5x"])
def test_import_grow_export_keeps_the_function(source, tmp_path, groups, n_layer):
    """import -> FPI growth -> export -> transformers: the source's logits. 1.5x is exact too, by
    RMSNorm's residual scale."""
    _, hf, ckpt = source
    back = grow_and_export(ckpt, tmp_path, groups, n_layer)
    idx = torch.randint(0, 256, (2, 64))
    assert (logits(back, idx) - logits(hf, idx)).abs().max() <= 1e-5


# Llama 3.1's scaling at a context of 256: head_dim 8 at theta 5e5 has wavelengths 6.3, 167, 4443 and
# 118,000 positions, so one pair is kept (< 256/4), one blended and two stretched 8x (> 256)
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 256}


@pytest.fixture(scope="module")
def scaled(tmp_path_factory):
    """(a random untied Llama with Llama 3.1's RoPE scaling and a context of 320, its import)."""
    hf = random_llama(tied=False, max_position_embeddings=320, rope_parameters=LLAMA3_ROPE)
    folder = tmp_path_factory.mktemp("llama3") / "hf"
    hf.save_pretrained(folder)
    checkpoint.save(folder.parent / "ckpt.pt", export_hf.import_hf(str(folder)))
    return hf, checkpoint.load(folder.parent / "ckpt.pt")


def test_scaled_rope_imports_with_transformers_logits(scaled):
    """Llama 3.1's frequencies are transformers', in all three regimes, and the logits agree on a
    sequence longer than the original context (300 > 256)."""
    hf, ckpt = scaled
    cfg = ckpt["config"]
    assert (cfg.rope_factor, cfg.rope_low_freq_factor, cfg.rope_high_freq_factor,
            cfg.rope_original_max_position_embeddings) == (8.0, 1.0, 4.0, 256)
    ours, unscaled = rope_inv_freq(cfg, "cpu"), rope_inv_freq(GPTConfig(**{**cfg.to_dict(), "rope_factor": 1.0}), "cpu")
    assert torch.allclose(ours, hf.model.rotary_emb.inv_freq, rtol=1e-6, atol=0)
    ratio = (ours / unscaled).tolist()
    assert ratio[0] == 1.0 and 1 / 8 < ratio[1] < 1 and ratio[2:] == [1 / 8, 1 / 8]
    model = checkpoint.build_model(ckpt, use_kernels=False).eval()
    idx = torch.randint(0, 256, (2, 300))
    assert (logits(model, idx) - logits(hf, idx)).abs().max() <= 1e-5


def test_scaled_rope_grows_and_exports_with_the_function(scaled, tmp_path):
    """import -> FPI growth 2x -> export: rope_type llama3 with the source's parameters, and the
    source's logits past the original context; growth refuses to change the scaling."""
    hf, ckpt = scaled
    back = grow_and_export(ckpt, tmp_path, 4, 3)
    assert back.config.rope_parameters == LLAMA3_ROPE
    idx = torch.randint(0, 256, (2, 300))
    assert (logits(back, idx) - logits(hf, idx)).abs().max() <= 1e-5
    wider = GPTConfig(**{**ckpt["config"].to_dict(), "n_head": 8, "n_kv_head": 4, "rope_factor": 32.0})
    with pytest.raises(UserError, match="rope_factor 8.0 -> 32.0"):
        expand(ckpt, wider, method="fpi", depth="zero")


def test_llama3_vocabulary_grows_and_exports_with_its_tokenizer(tmp_path, monkeypatch):
    """README's Llama 3.2 commands on a tiny stand-in (Llama 3's 128,256 tokens and RoPE scaling,
    tied head): import -> FPI 1.5x -> export with the llama3 tokenizer.json found as tokenizer.py
    finds it: transformers' logits, and <|end_of_text|> as the separator."""
    hf = random_llama(tied=True, vocab_size=128256, max_position_embeddings=320, rope_parameters=LLAMA3_ROPE)
    hf.save_pretrained(tmp_path / "src")
    export_hf.main(["--import", str(tmp_path / "src"), "--out", str(tmp_path / "ckpt.pt")])
    ckpt = checkpoint.load(tmp_path / "ckpt.pt")
    assert (ckpt["config"].tokenizer, ckpt["config"].vocab_size, ckpt["config"].rope_factor) == ("llama3", 128256, 8.0)
    smollm2_like_tokenizer(tmp_path / "tok", "llama3", "<|end_of_text|>")
    monkeypatch.setenv("PGF_TOKENIZERS", str(tmp_path / "tok"))
    back = grow_and_export(ckpt, tmp_path, 3, 2)
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert tok.eos_token == "<|end_of_text|>" and back.config.eos_token_id == tok.eos_token_id == 0
    idx = torch.randint(0, 128256, (1, 300))
    assert (logits(back, idx) - logits(hf, idx)).abs().max() <= 1e-5


def test_export_then_import_is_the_identity(tmp_path):
    """A tiny-llama member exported and imported again: the same preset, the same tensors."""
    torch.manual_seed(0)
    model = GPT(PRESETS["llama-50k"], use_kernels=False)
    checkpoint.save(tmp_path / "ckpt.pt", checkpoint.make_checkpoint(model))
    export_hf.export(tmp_path / "ckpt.pt", tmp_path / "hf")
    checkpoint.save(tmp_path / "back.pt", export_hf.import_hf(str(tmp_path / "hf")))
    back = checkpoint.load(tmp_path / "back.pt")
    assert back["config"] == PRESETS["llama-50k"] and back["meta"]["size"] == "llama-50k"
    sd = model.state_dict()
    assert back["model"].keys() == sd.keys() and all(torch.equal(back["model"][k], sd[k]) for k in sd)


def test_smollm2_configs_are_the_presets():
    """SmolLM2's config.json values (135M, 360M, 1.7B) import as the smollm2 presets."""
    shapes = {"smollm2-135m": (30, 576, 9, 3, 1536, 1e5), "smollm2-360m": (32, 960, 15, 5, 2560, 1e5),
              "smollm2-1.7b": (24, 2048, 32, 32, 8192, 1.3e5)}
    for size, (n_layer, width, heads, kv, d_ff, theta) in shapes.items():
        hc = transformers.LlamaConfig(
            vocab_size=49152, hidden_size=width, intermediate_size=d_ff, num_hidden_layers=n_layer,
            num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=8192,
            rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": theta},
            tie_word_embeddings=True)
        assert export_hf.config_from_llama(hc) == PRESETS[size], size


def test_llama32_config_is_the_preset_and_grows():
    """Llama 3.2 1B's config.json (rope_scaling as written there) imports as the llama3.2-1b preset,
    which grows into llama3.2-3b-hd64."""
    hc = transformers.LlamaConfig.from_dict({
        "vocab_size": 128256, "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
        "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64, "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "tie_word_embeddings": True,
        "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                         "original_max_position_embeddings": 8192, "rope_type": "llama3"}})
    cfg = export_hf.config_from_llama(hc)
    assert cfg == PRESETS["llama3.2-1b"] and cfg.tokenizer == "llama3"
    assert export_hf.rope_parameters(cfg) == hc.rope_parameters
    check_growth(cfg, PRESETS["llama3.2-3b-hd64"])


def test_bad_llamas_are_refused(tmp_path):
    scaled = random_llama(tied=True, rope_parameters={"rope_type": "linear", "rope_theta": 5e5, "factor": 4.0})
    scaled.save_pretrained(tmp_path / "scaled")
    with pytest.raises(UserError, match="rope_type=linear"):
        export_hf.main(["--import", str(tmp_path / "scaled"), "--out", str(tmp_path / "c.pt")])
    random_llama(tied=True, vocab_size=1000).save_pretrained(tmp_path / "vocab")
    with pytest.raises(UserError, match="1000 tokens is none of"):
        export_hf.main(["--import", str(tmp_path / "vocab"), "--out", str(tmp_path / "c.pt")])
    assert not (tmp_path / "c.pt").exists()
    mixed = GPTConfig(1, 2, 8, 32, 256, 16, "bytes", mlp="swiglu")  # LayerNorm with SwiGLU: no class
    checkpoint.save(tmp_path / "mixed.pt", checkpoint.make_checkpoint(GPT(mixed)))
    with pytest.raises(UserError, match="no transformers class"):
        export_hf.export(tmp_path / "mixed.pt", tmp_path / "out")
