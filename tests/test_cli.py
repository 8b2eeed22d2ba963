"""Starting the scripts: usage errors and --help answer before torch loads, and every script sets
OMP_WAIT_POLICY=PASSIVE before torch loads OpenMP (spinning OpenMP threads slow a busy machine)."""
import os

import pytest

from conftest import run_script

CLIS = ["train.py", "evaluate.py", "sample.py", "expand.py", "export_hf.py", "flops.py", "bench/gpu.py",
        "bench/cpu.py", "bench/aot.py", "data/prepare.py"]
EARLY_PARSE = CLIS  # every parser runs before the heavy imports


def imported(script, *argv):
    """(process, module names in the order their import finished) of `python -X importtime script`."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    proc = run_script("-X", "importtime", script, *argv, env=env, timeout=300)
    names = [ln.split("|")[-1].strip() for ln in proc.stderr.splitlines() if ln.startswith("import time:")]
    return proc, names


@pytest.mark.parametrize("argv", [["--help"], ["--bogus"]], ids=["help", "bogus"])
@pytest.mark.parametrize("script", EARLY_PARSE)
def test_usage_is_answered_without_torch(script, argv):
    proc, names = imported(script, *argv)
    assert proc.returncode == (0 if argv == ["--help"] else 2), proc.stderr[-2000:]
    assert "usage:" in (proc.stdout if argv == ["--help"] else proc.stderr)
    assert "util" in names and not [n for n in names if n.split(".")[0] == "torch"]


@pytest.mark.parametrize("script", CLIS)
def test_omp_wait_policy_is_set_before_torch(script):
    proc, names = imported(script, "--help")
    assert proc.returncode == 0, proc.stderr[-2000:]
    torch_at = [i for i, n in enumerate(names) if n.split(".")[0] == "torch"]
    assert names.index("util") < min(torch_at, default=len(names))


def test_a_cli_child_sees_the_passive_wait_policy():
    code = ("import os, runpy, sys\nsys.argv = ['sample.py', '--help']\n"
            "try:\n    runpy.run_path('sample.py', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "print(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    proc = run_script("-c", code, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "PASSIVE False"  # set by util, and no torch for --help
