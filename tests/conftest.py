"""Shared test fixtures: repo on sys.path, offline data from ../shared, CLI helpers."""
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
OPENSTAX = SHARED / "data" / "corpus" / "openstax"


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
    if not OPENSTAX.is_dir():
        pytest.skip(f"offline corpus not found at {OPENSTAX} (set PGF_SHARED)")
    return OPENSTAX


@pytest.fixture(scope="session")
def byte_data(tmp_path_factory, openstax):
    """OpenStax as bytes, the first ~4M training tokens: enough for short training runs."""
    out = tmp_path_factory.mktemp("data") / "openstax_bytes"
    proc = run_script("data/prepare.py", "--dataset", openstax, "--tokenizer", "bytes", "--out", out,
                      "--tokens", 4_000_000)
    assert proc.returncode == 0, proc.stderr
    return out

