"""A short mutation check, run by hand (not by CI, not collected by pytest): each mutant is a one-line
mistake in the recipe that once went unnoticed by the not-slow suite. It is applied to a copy of the
working tree, the test files that guard it run there, and the mutant must make them fail.

    python tests/mutants.py            # every mutant; prints caught/survived per mutant, exit 1 if any survived
    python tests/mutants.py lr_warmup  # the named ones
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


def working_tree(dest: Path):
    """The files git tracks or would track (untracked, not ignored), as they are now."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for f in filter(None, files):
        if (ROOT / f).is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dest / f)


def run(name: str) -> bool:
    """True when the mutant is caught: its tests fail (exit status 1), not merely fail to run."""
    path, line, mutant, tests = MUTANTS[name]
    with tempfile.TemporaryDirectory(prefix=f"mutant_{name}_") as tmp:
        tree = Path(tmp)
        working_tree(tree)
        source = (tree / path).read_text()
        if source.count(line) != 1:
            raise SystemExit(f"error: {name}: {path} holds {source.count(line)} copies of {line!r}, not one")
        (tree / path).write_text(source.replace(line, mutant))
        t0 = time.time()
        shared = ROOT.parent / "shared"  # the copy has no ../shared beside it: point the tests at this one
        env = {**os.environ, **({"PGF_SHARED": str(shared)} if shared.is_dir() else {})}
        proc = subprocess.run([sys.executable, "-m", "pytest", "-m", "not slow", "-x", "-q", "-p", "no:cacheprovider",
                               *tests], cwd=tree, capture_output=True, text=True, env=env)
        if proc.returncode not in (0, 1):
            raise SystemExit(f"error: {name}: pytest exited {proc.returncode}\n{proc.stdout[-3000:]}")
        caught = proc.returncode == 1
        failed = [ln.split(" - ")[0] for ln in proc.stdout.splitlines() if ln.startswith("FAILED")]
        print(f"{name:32s} {'caught' if caught else 'SURVIVED':8s} {time.time() - t0:5.0f} s  "
              f"{failed[0] if failed else ' '.join(tests)}", flush=True)
        return caught


def main(argv):
    names = argv or list(MUTANTS)
    unknown = [n for n in names if n not in MUTANTS]
    if unknown:
        raise SystemExit(f"error: unknown mutant {', '.join(unknown)}; known: {', '.join(MUTANTS)}")
    survived = [n for n in names if not run(n)]
    print(f"{len(names) - len(survived)} of {len(names)} caught" + (f"; survived: {', '.join(survived)}" if survived else ""))
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
