"""A short mutation check, run by hand (not by CI, not collected by pytest): each mutant is a one-line
mistake in the recipe or the scoring (the LR, accumulation, acc_norm and RNG ones once passed the
whole not-slow suite). It is applied to a copy of the working tree, the not-slow tests that guard it
run there, and one of them must fail, and pass again without the mutant. A few minutes on 2 cores.

    python tests/mutants.py                       # every mutant: caught/SURVIVED each; exit 1 if any survived
    python tests/mutants.py lr_warmup_off_by_one  # the named ones
"""
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# name: (file, the line as it is, the mutant, the test files that must catch it)
MUTANTS = {
    "lr_cosine_to_zero": (
        "train.py", "return min_lr + 0.5 * (cfg.lr - min_lr) * (1 + math.cos(math.pi * progress))",
        "return 0.5 * cfg.lr * (1 + math.cos(math.pi * progress))", ["tests/test_recipe.py"]),
    "lr_warmup_off_by_one": (
        "train.py", "return cfg.lr * (step + 1) / warmup", "return cfg.lr * step / warmup", ["tests/test_recipe.py"]),
    "lr_wsd_to_zero": (
        "train.py", "return cfg.lr + (min_lr - cfg.lr) * (step - start) / max(1, max_iters - start)",
        "return cfg.lr - cfg.lr * (step - start) / max(1, max_iters - start)", ["tests/test_recipe.py"]),
    "loss_not_divided_by_grad_accum": (
        "train.py", "(loss / cfg.grad_accum).backward()", "loss.backward()",
        ["tests/test_recipe.py"]),
    "loss_not_divided_by_grad_accum_ddp_fsdp": (  # the same mistake, caught by the torchrun tests alone
        "train.py", "(loss / cfg.grad_accum).backward()", "loss.backward()",
        ["tests/test_distributed.py::test_gradient_accumulation_syncs_once_and_matches"]),
    "acc_norm_by_tokens": (  # with the byte tokenizer a continuation's tokens are its UTF-8 bytes and the space
        "zeroshot.py", "[len(c) for c in choices]", "[len((' ' + c).encode()) for c in choices]",
        ["tests/test_evaluate.py"]),
    "resume_forgets_the_rng": (
        "train.py", 'torch.set_rng_state(saved["rng"])', "pass", ["tests/test_recipe.py"]),
    "init_drops_the_lineage": (
        "train.py", 'self.meta = {"lineage": init["meta"].get("lineage", []), "init": str(cfg.init),',
        'self.meta = {"lineage": [], "init": str(cfg.init),', ["tests/test_train.py"]),
    "speculative_resamples_from_p": (
        "sample.py", "return i, draw(residual if residual.sum() > 0 else ps[i], generator)",
        "return i, draw(ps[i], generator)", ["tests/test_speculative.py"]),
}


def fail(message: str):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def working_tree(dest: Path):
    """The files git tracks or would track (untracked, not ignored), as they are now."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for f in filter(None, files):
        if (ROOT / f).is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dest / f)


def pytest(tree: Path, *args) -> subprocess.CompletedProcess:
    shared = ROOT.parent / "shared"  # a copy has no ../shared beside it: point the tests at this one
    env = {**os.environ, **({"PGF_SHARED": str(shared)} if shared.is_dir() else {})}
    return subprocess.run([sys.executable, "-m", "pytest", "-m", "not slow", "-x", "-q", "-p", "no:cacheprovider",
                           *args], cwd=tree, capture_output=True, text=True, env=env)


def run(name: str) -> bool:
    """True when the mutant is caught: a test fails (not merely fails to run) that passes without it."""
    path, line, mutant, tests = MUTANTS[name]
    with tempfile.TemporaryDirectory(prefix=f"mutant_{name}_") as tmp:
        tree = Path(tmp)
        working_tree(tree)
        source = (tree / path).read_text()
        if source.count(line) != 1:
            fail(f"{name}: {path} holds {source.count(line)} copies of {line!r}, not one")
        (tree / path).write_text(source.replace(line, mutant))
        t0 = time.time()
        proc = pytest(tree, *tests)
        if proc.returncode not in (0, 1):
            print(proc.stdout[-3000:])
            fail(f"{name}: pytest exited {proc.returncode} (not a test failure: see above)")
        failed = [ln.split()[1] for ln in proc.stdout.splitlines() if ln.startswith(("FAILED ", "ERROR "))]
        if failed:  # the test that caught it must pass on the tree as it is
            (tree / path).write_text(source)
            if pytest(tree, failed[0]).returncode != 0:
                fail(f"{name}: {failed[0]} fails without the mutant too")
        print(f"{name:40s} {'caught' if failed else 'SURVIVED':8s} {time.time() - t0:5.0f} s  "
              f"{'by ' + failed[0] if failed else ' '.join(tests)}", flush=True)
        return bool(failed)


def main(argv):
    names = argv or list(MUTANTS)
    unknown = [n for n in names if n not in MUTANTS]
    if unknown:
        fail(f"unknown mutant {', '.join(unknown)}; known: {', '.join(MUTANTS)}")
    survived = [n for n in names if not run(n)]
    print(f"{len(names) - len(survived)} of {len(names)} caught"
          + (f"; survived: {', '.join(survived)}" if survived else ""))
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
