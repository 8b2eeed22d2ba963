"""What run_family.sh produces, reduced to values a refactor must not change: the sha256 of every
checkpoint's model tensors of the QUICK tiny family, and the paper family's dry-run commands.
tests/family_guard.json holds them as the code gave them before run_family.sh was restructured (the dry run
recorded again from main after it gained train.py's layout and interval flags, issue 28);
tests/test_family.py and tests/test_dry_run.py compare against it.

    python tests/family_guard.py --run OUT/seed_7 --dry_run dry.txt --out_dir OUT --data DATA   # re-record

Re-record only for an intended change of what is trained or printed, and say so in the commit.
"""
import argparse
import hashlib
import json
import re
import sys
from pathlib import Path

GUARD = Path(__file__).with_name("family_guard.json")


def model_hashes(run: Path) -> dict[str, str]:
    """{kind/ckpt_X.pt: sha256 over the model tensors (name, dtype, shape, bytes)} of a seed's folder."""
    import torch

    import checkpoint
    hashes = {}
    for path in sorted(run.glob("*/ckpt_*.pt")):
        h = hashlib.sha256()
        for name, t in sorted(checkpoint.load(path)["model"].items()):
            h.update(f"{name} {t.dtype} {tuple(t.shape)}\n".encode())
            h.update(t.contiguous().view(-1).view(dtype=torch.uint8).numpy().tobytes())
        hashes[f"{path.parent.name}/{path.name}"] = h.hexdigest()
    return hashes


def dry_run_commands(stdout: str, out: str, data: str) -> list[str]:
    """The dry run's layout lines and commands, with the run's DATA and OUT paths replaced by names
    (DATA first: it may lie inside OUT)."""
    keep = re.compile(r"^(stage \S+: micro-batch |  \S*(torchrun|python3?) |  \(dry run\) )")
    return [ln.replace(data, "DATA").replace(out, "OUT").strip() for ln in stdout.splitlines() if keep.match(ln)]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True, help="a QUICK family's seed_7 folder")
    ap.add_argument("--dry_run", type=Path, required=True, help="stdout of the paper family's dry run")
    ap.add_argument("--out_dir", required=True, help="the dry run's OUT")
    ap.add_argument("--data", required=True, help="the dry run's DATA")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import torch
    guard = {"torch": torch.__version__, "quick_family_seed_7": model_hashes(args.run),
             "paper_dry_run_nproc_8": dry_run_commands(args.dry_run.read_text(), args.out_dir, args.data)}
    GUARD.write_text(json.dumps(guard, indent=1) + "\n")
    print(f"wrote {GUARD}")


if __name__ == "__main__":
    main()
