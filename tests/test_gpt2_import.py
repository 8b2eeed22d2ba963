"""export_hf.py --import: a transformers GPT-2 becomes a checkpoint of this project, and the gpt2
family's presets are OpenAI GPT-2's shapes. Small random GPT-2s made here stand in for the Hub's."""
import os

import pytest
import torch

import checkpoint
from conftest import SHARED, assert_user_error, need_shared, run_script
from expand import expand
from model import FAMILIES, GPT, GPTConfig, PRESETS, count_params
from util import UserError

transformers = pytest.importorskip("transformers", reason="transformers is optional (export/import only)")
export_hf = pytest.importorskip("export_hf")

N_VOCAB = 50257  # GPT-2's BPE; the presets pad it to 50304
SHARED_GPT2 = SHARED / "tokenizer" / "gpt2"
HF_SHAPES = {"124m": (12, 12, 768), "355m": (24, 16, 1024), "774m": (36, 20, 1280), "1.5b": (48, 25, 1600)}


def random_gpt2(tied: bool, seed: int = 0, **shape):
    """A GPT2LMHeadModel with every weight random (biases and LayerNorms too), in eval mode."""
    cfg = transformers.GPT2Config(**{"n_layer": 2, "n_head": 2, "n_embd": 32, "n_positions": 64, **shape},
                                  tie_word_embeddings=tied)
    torch.manual_seed(seed)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0.0, 0.1)
    return hf


def imported(src, path) -> dict:
    """import_hf's checkpoint as train.py and expand.py read it: saved, then loaded."""
    checkpoint.save(path, export_hf.import_hf(str(src)))
    return checkpoint.load(path)


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def source(request, tmp_path_factory):
    """(folder of a saved random GPT-2, the transformers model, its imported checkpoint)."""
    hf = random_gpt2(tied=request.param)
    folder = tmp_path_factory.mktemp("gpt2") / "hf"
    hf.save_pretrained(folder)
    return folder, hf, imported(folder, folder.parent / "ckpt.pt")


def logits_hf(hf, idx):
    with torch.no_grad():
        return hf(idx).logits


def logits_ours(ckpt, idx):
    with torch.no_grad():
        return checkpoint.build_model(ckpt, use_kernels=False).eval()(idx)[0]


def test_imported_logits_equal_transformers(source):
    _, hf, ckpt = source
    cfg = ckpt["config"]
    assert cfg == GPTConfig(2, 2, 16, 128, 50304, 64, "gpt2")
    assert ckpt["meta"]["size"] == "custom(L2,d32)" and ckpt["meta"]["origin"]["tokenizer_vocab"] == N_VOCAB
    idx = torch.randint(0, N_VOCAB, (3, 64))
    ours, theirs = logits_ours(ckpt, idx), logits_hf(hf, idx)
    assert (ours[..., :N_VOCAB] - theirs).abs().max() <= 1e-5
    # untied, with the source's values; the padding rows of wte are zeros
    sd = ckpt["model"]
    assert torch.equal(sd["head.weight"][:N_VOCAB], hf.lm_head.weight)
    assert sd["head.weight"].data_ptr() != sd["wte.weight"].data_ptr()
    assert torch.equal(sd["wte.weight"][:N_VOCAB], hf.transformer.wte.weight)
    assert not sd["wte.weight"][N_VOCAB:].any()
    # a padding id's logit is the mean of the real ones, so its probability is at most 1/N_VOCAB
    assert torch.allclose(ours[..., N_VOCAB:], ours[..., :N_VOCAB].mean(-1, keepdim=True).expand(-1, -1, 47),
                          atol=1e-5)
    assert ours.softmax(-1)[..., N_VOCAB:].max() <= 1 / N_VOCAB


def test_import_grow_export_keeps_the_function(source, tmp_path, capsys):
    """import -> FPI growth (heads 2 -> 4, FFN 4x, a zero block: exact) -> export -> transformers:
    the same logits as the source GPT-2."""
    need_shared("tokenizer/gpt2")
    folder, hf, _ = source
    export_hf.main(["--import", str(folder), "--out", str(tmp_path / "ckpt.pt")])
    assert capsys.readouterr().out == (f"wrote {tmp_path / 'ckpt.pt'}: custom(L2,d32), 2 layers, width 32, "
                                       "vocab 50257 padded to 50304\n")
    target = GPTConfig(3, 4, 16, 256, 50304, 64, "gpt2")
    grown = expand(checkpoint.load(tmp_path / "ckpt.pt"), target, method="fpi", depth="zero")
    assert grown["meta"]["lineage"] == ["custom(L2,d32)"]
    checkpoint.save(tmp_path / "grown.pt", grown)
    export_hf.main(["--ckpt", str(tmp_path / "grown.pt"), "--out", str(tmp_path / "hf"),
                    "--tokenizer_dir", str(SHARED_GPT2)])
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert back.config.n_embd == 64 and back.config.n_layer == 3
    idx = torch.randint(0, N_VOCAB, (2, 64))
    assert (logits_hf(back, idx)[..., :N_VOCAB] - logits_hf(hf, idx)).abs().max() <= 1e-5


def test_export_then_import_is_the_identity(tmp_path):
    """A member exported and imported again is the same checkpoint: same preset, same tensors."""
    torch.manual_seed(0)
    model = GPT(PRESETS["20k"], use_kernels=False)
    checkpoint.save(tmp_path / "ckpt.pt", checkpoint.make_checkpoint(model))
    export_hf.export(tmp_path / "ckpt.pt", tmp_path / "hf")
    back = imported(tmp_path / "hf", tmp_path / "back.pt")
    assert back["config"] == PRESETS["20k"] and back["meta"]["size"] == "20k"
    sd = model.state_dict()
    assert back["model"].keys() == sd.keys()
    assert all(torch.equal(back["model"][k], sd[k]) for k in sd)


@pytest.mark.parametrize("size", FAMILIES["gpt2"])
def test_gpt2_presets_are_gpt2s_shapes_and_counts(size):
    n_layer, n_head, n_embd = HF_SHAPES[size]
    hc = transformers.GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=n_embd)
    cfg = PRESETS[size]
    assert export_hf.config_from_hf(hc) == cfg and checkpoint.size_name(cfg) == size
    with torch.device("meta"):
        hf = transformers.GPT2LMHeadModel(hc)
    hf_params = sum(p.numel() for p in hf.parameters())  # the tied head counted once
    head, padding = cfg.vocab_size * cfg.n_embd, (cfg.vocab_size - N_VOCAB) * cfg.n_embd
    assert count_params(cfg)["total"] - head - padding == hf_params
    if size == "124m":
        assert hf_params == 124_439_808  # the count Hugging Face gives for gpt2


def test_gpt2_family_plans_and_grows():
    import flops
    p = flops.plan("gpt2", lr_schedule="adjusted")
    assert [s["size"] for s in p["progressive"]] == FAMILIES["gpt2"]
    assert [s["lr"] for s in p["progressive"]] == pytest.approx([6e-4, 6e-4 - 4e-4 / 3, 2e-4 + 4e-4 / 3, 2e-4])
    assert {s["batch_size"] * s["seq_len"] for s in p["progressive"]} == {512 * 1024}
    with torch.device("meta"):  # shapes only: expand.py's checks accept every step of the family
        ckpt = GPT(PRESETS["124m"])
    for size in FAMILIES["gpt2"][1:]:
        ckpt = expand(ckpt, PRESETS[size], method="fpi")
        assert ckpt["config"]["n_layer"] == PRESETS[size].n_layer and ckpt["meta"]["size"] == size


def test_import_bad_inputs(tmp_path):
    # offline, in a fresh interpreter as a user runs it: the real Hub path fails in one line
    # (HF_HUB_OFFLINE skips the retries of a network that is not there)
    assert_user_error(run_script("export_hf.py", "--import", "gpt2", "--out", tmp_path / "c.pt",
                                 env={**os.environ, "HF_HUB_OFFLINE": "1"}), "Hub model 'gpt2'")
    with pytest.raises(UserError, match="no such folder"):
        export_hf.main(["--import", str(tmp_path / "missing"), "--out", str(tmp_path / "c.pt")])
    with pytest.raises(UserError, match="no config.json"):
        export_hf.main(["--import", str(tmp_path), "--out", str(tmp_path / "c.pt")])
    neox = transformers.GPTNeoXConfig(hidden_size=32, num_attention_heads=2, num_hidden_layers=1)
    neox.save_pretrained(tmp_path / "neox")
    with pytest.raises(UserError, match="gpt_neox model, not GPT-2 .GPT2LMHeadModel. or Llama"):
        export_hf.main(["--import", str(tmp_path / "neox"), "--out", str(tmp_path / "c.pt")])
    relu = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=32, activation_function="relu")
    relu.save_pretrained(tmp_path / "relu")
    with pytest.raises(UserError, match="activation_function=relu"):
        export_hf.main(["--import", str(tmp_path / "relu"), "--out", str(tmp_path / "c.pt")])
    transformers.GPT2Config(n_layer=1, n_head=2, n_embd=32).save_pretrained(tmp_path / "no_weights")
    with pytest.raises(UserError, match="cannot load a transformers GPT-2"):
        export_hf.main(["--import", str(tmp_path / "no_weights"), "--out", str(tmp_path / "c.pt")])
    headless = tmp_path / "untied_without_head"  # a tied model's files under an untied config
    random_gpt2(tied=True).save_pretrained(headless)
    (headless / "config.json").write_text((headless / "config.json").read_text().replace(
        '"tie_word_embeddings": true', '"tie_word_embeddings": false'))
    with pytest.raises(UserError, match="lacks weights of GPT2LMHeadModel .lm_head.weight"):
        export_hf.main(["--import", str(headless), "--out", str(tmp_path / "c.pt")])
    random_gpt2(tied=True, vocab_size=1000).save_pretrained(tmp_path / "small_vocab")
    with pytest.raises(UserError, match="neither GPT-2's BPE"):
        export_hf.main(["--import", str(tmp_path / "small_vocab"), "--out", str(tmp_path / "c.pt")])
    with pytest.raises(UserError, match="--tokenizer_dir is for export"):
        export_hf.main(["--import", "gpt2", "--out", str(tmp_path / "c.pt"), "--tokenizer_dir", "x"])
    assert not (tmp_path / "c.pt").exists()


@pytest.mark.slow
def test_gpt2_small_shape_imports_grows_to_355m_and_trains(openstax, tmp_path):
    """docs/gpu.md's commands at the real shapes, on a random GPT-2 small (no download): import gives
    the 124m preset, expand.py grows it to 355m, train.py --init takes a step from it."""
    data = tmp_path / "data"
    proc = run_script("data/prepare.py", "--dataset", openstax, "--tokenizer", "gpt2", "--out", data,
                      "--tokens", 50_000, "--val_tokens", 20_000)
    assert proc.returncode == 0, proc.stderr
    small = random_gpt2(tied=True, n_layer=12, n_head=12, n_embd=768, n_positions=1024)
    small.save_pretrained(tmp_path / "hf")
    steps = [("export_hf.py", "--import", tmp_path / "hf", "--out", tmp_path / "ckpt_124m.pt"),
             ("expand.py", "--src", tmp_path / "ckpt_124m.pt", "--size", "355m", "--method", "fpi",
              "--out", tmp_path / "ckpt_124m_expanded.pt"),
             ("train.py", "--size", "355m", "--init", tmp_path / "ckpt_124m_expanded.pt", "--data", data,
              "--max_iters", 2, "--batch_size", 1, "--seq_len", 64, "--eval_tokens", 128, "--device", "cpu",
              "--out", tmp_path / "355m", "--ckpt", tmp_path / "ckpt_355m.pt")]
    for step in steps:
        proc = run_script(*step)
        assert proc.returncode == 0, proc.stderr[-2000:]
    assert checkpoint.load(tmp_path / "ckpt_124m.pt", mmap=True)["meta"]["size"] == "124m"
    trained = checkpoint.load(tmp_path / "ckpt_355m.pt", mmap=True)
    assert trained["config"] == PRESETS["355m"] and trained["meta"]["lineage"] == ["124m"]
    assert trained["train"]["done"] and trained["train"]["step"] == 2
