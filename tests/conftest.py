"""Shared test fixtures: repo on sys.path, offline data from ../shared, CLI helpers.

A test that needs ../shared (the offline corpus, eval sets, GPT-2's BPE files) skips without it; with
PGF_REQUIRE_SHARED=1 (.ci/run sets it when ../shared exists) the same test fails instead, so a moved or
renamed file in ../shared cannot turn tests into silent skips."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

# Triton reads TRITON_INTERPRET when it is first imported, which some torch modules do (e.g.
# torch.utils.flop_counter, imported by tests/test_flops.py): switch its CPU interpreter on before
# any test module is collected, for tests/test_kernels.py. CPU-only code ignores it.
os.environ.setdefault("TRITON_INTERPRET", "1")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SHARED = Path(os.environ.get("PGF_SHARED", ROOT.parent / "shared"))


def need_shared(relative: str) -> Path:
    """SHARED / relative, which the calling test needs: skip without it (fail under PGF_REQUIRE_SHARED=1)."""
    __tracebackhide__ = True  # the skip is reported at the calling test's line, not here
    path = SHARED / relative
    if not path.exists():
        message = f"{path} not found (offline data from ../shared; set PGF_SHARED)"
        if os.environ.get("PGF_REQUIRE_SHARED") == "1":
            pytest.fail(f"{message}, but PGF_REQUIRE_SHARED=1 says ../shared is there", pytrace=False)
        pytest.skip(message)
    return path


def run_script(*args, timeout=600, **kw) -> subprocess.CompletedProcess:
    """Run one of the repo's scripts in a fresh interpreter (as a user would), capturing output."""
    return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, **kw)


def assert_user_error(proc: subprocess.CompletedProcess, *words):
    """A user mistake: exit code 2, exactly one `error:` line on stderr, no traceback."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
    for w in words:
        assert w in lines[0], (w, lines[0])


@pytest.fixture(scope="session")
def openstax():
    return need_shared("data/corpus/openstax")


@pytest.fixture(scope="session")
def byte_data(tmp_path_factory, openstax):
    """OpenStax as bytes, the first ~4M training tokens: enough for short training runs."""
    out = tmp_path_factory.mktemp("data") / "openstax_bytes"
    proc = run_script("data/prepare.py", "--dataset", openstax, "--tokenizer", "bytes", "--out", out,
                      "--tokens", 4_000_000)
    assert proc.returncode == 0, proc.stderr
    return out



@pytest.fixture(scope="session")
def random_bytes(tmp_path_factory):
    """A data folder as data/prepare.py writes it, of seeded random bytes (no ../shared needed):
    for tests of the training recipe, which do not need text to learn from."""
    import json

    import numpy as np
    out = tmp_path_factory.mktemp("data") / "random_bytes"
    out.mkdir()
    rng = np.random.default_rng(0)
    splits = {"train": rng.integers(0, 255, 200_000, dtype=np.uint8),
              "val": rng.integers(0, 255, 20_000, dtype=np.uint8)}
    for name, tokens in splits.items():
        tokens.tofile(out / f"{name}.bin")
    (out / "meta.json").write_text(json.dumps({"tokenizer": "bytes", "vocab_size": 256, "dtype": "uint8",
                                               "train_tokens": len(splits["train"]),
                                               "val_tokens": len(splits["val"]), "fingerprint": "random"}))
    return out


def mean_loss_gradient(model_cfg, weights: dict, tokens, seq_len: int, batch: int, seed: int, step: int,
                       micro_steps: int) -> dict:
    """The gradient of the mean loss over the micro-batches of one optimizer step, computed here on
    a fresh copy of the model: what train.py's accumulated gradient must equal."""
    from model import GPT
    from train import get_batch
    model = GPT(model_cfg, use_kernels=False)
    model.load_state_dict(weights)
    losses = [model(*get_batch(tokens, seq_len, batch, seed, step, micro))[1] for micro in range(micro_steps)]
    (sum(losses) / micro_steps).backward()
    return {name: p.grad for name, p in model.named_parameters()}
