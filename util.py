"""Small pieces every script shares: user-facing errors, atomic writes, device choice.

Every script imports this module before torch, and it imports torch only inside pick_device: so the
OpenMP setting below is in place when torch loads OpenMP, and a script can check its arguments
before paying for torch (seconds on a busy machine).
"""
import argparse
import errno
import hashlib
import json
import math
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

# OpenMP threads that spin while they wait lose most of their time when the cores are shared (about
# 7x slower sampling and evaluation on a busy machine); passive waiting costs nothing when idle.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


class UserError(Exception):
    """A mistake in the user's input: printed as one line on stderr, exit code 2, no traceback."""


def run_cli(main):
    """Run a script's main(); user errors become `error: ...` on stderr and exit status 2."""
    try:
        main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


def check_args(name: str, parse_args):
    """Called before a script's heavy imports: when the script runs as a program (name ==
    "__main__"), run its parser now, so --help and usage errors answer without loading torch.
    main() parses again, which is cheap and keeps main(argv) callable from tests."""
    if name == "__main__":
        run_cli(lambda: parse_args(sys.argv[1:]))


class BooleanOptional(argparse.BooleanOptionalAction):
    """--flag / --no_flag: argparse's own action spells the negation --no-flag, a second style."""

    def __init__(self, option_strings, *args, **kwargs):
        super().__init__(option_strings, *args, **kwargs)
        self.option_strings = [s.replace("--no-", "--no_", 1) for s in self.option_strings]

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, not option_string.startswith("--no_"))


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one flag style: every flag is defined in snake_case (--val_data, as train.py's
    TrainConfig fields and nanoGPT), and its kebab spelling (--val-data) is accepted as an alias, so
    --help shows one spelling and commands written the other way keep working."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # groups share the parser's registry, so action=argparse.BooleanOptionalAction anywhere gets --no_
        self.register("action", argparse.BooleanOptionalAction, BooleanOptional)

    def parse_known_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        end = args.index("--") if "--" in args else len(args)  # after a bare --, values only
        return super().parse_known_args([snake_flag(a) for a in args[:end]] + args[end:], namespace)


def snake_flag(arg: str) -> str:
    """--foo-bar[=v] -> --foo_bar[=v]; values and short options are left alone."""
    if not arg.startswith("--"):
        return arg
    name, eq, value = arg[2:].partition("=")
    return "--" + name.replace("-", "_") + eq + value


def md_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table of string cells: the header, the separator row, one line per row."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def atomic_write(path, write_fn, mode="wb"):
    """Write `path` through write_fn(file) into a temp file beside it, fsync, then rename.

    A crash at any moment leaves either the old file or the new one, never half of one.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp's 0600 would hide results from other users
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror}; choose a writable --out") from e
    try:
        with os.fdopen(fd, mode) as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch.save reports a failed write as a RuntimeError
        raise write_error(path, e, tmp) from e
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    dir_fd = os.open(path.parent, os.O_RDONLY)  # make the rename itself durable
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_error(path: Path, e: Exception, tmp: str) -> UserError:
    """One line for a failed write; removes the temp file. torch.save turns the OSError of a full
    disk into RuntimeError 'unexpected pos' with the OSError as its context; without one, a disk with
    no room left while the partial temp file still holds its share is taken as full."""
    cause = e
    while cause is not None and not isinstance(cause, OSError):
        cause = cause.__cause__ or cause.__context__
    code = cause.errno if cause is not None else None
    if code in (errno.ENOSPC, errno.EDQUOT) or code is None and shutil.disk_usage(path.parent).free < 2**20:
        Path(tmp).unlink(missing_ok=True)  # the free space the user can count on is what remains without it
        free = shutil.disk_usage(path.parent).free / 2**20
        return UserError(f"writing {path} failed: no space left on the device of {path.parent} "
                         f"({free:.0f} MB free); free space or choose another --out; the previous "
                         "file, if any, is intact")
    reason = os.strerror(code) if code else str(e).splitlines()[-1]
    return UserError(f"writing {path} failed ({reason}); the previous file, if any, is intact")


def read_jsonl(path) -> list:
    """The records of a JSON-lines file (metrics.jsonl), [] if there is none; a last line cut short by
    a killed run is left out."""
    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError:
        return []
    rows = []
    for line in lines:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return rows


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


def write_json(path, obj):
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2) + "\n"), mode="w")


def check_ranges(args, ranges: dict[str, str]):
    """Every numeric flag in one line each: ranges maps a flag (an attribute of args) to its interval,
    written as in mathematics ("(0, inf)": > 0; "[0, 1)": from 0 up to below 1). NaN and infinities
    are refused too. The error names the flag, its value and the interval."""
    for name, interval in ranges.items():
        value = getattr(args, name)
        lo, hi = (float(end) for end in interval[1:-1].split(","))
        # an int is compared as it is: float() of a 400-digit --seed would overflow
        finite = isinstance(value, int) or math.isfinite(value)
        inside = (lo < value if interval[0] == "(" else lo <= value) and \
                 (value < hi if interval[-1] == ")" else value <= hi)
        if not (finite and inside):
            raise UserError(f"--{name} {value} is out of range: it must be in {interval}")


DEVICES = re.compile(r"auto|cpu|cuda(:\d+)?")


def check_device(name: str):
    if not DEVICES.fullmatch(name):
        raise UserError(f"--device {name!r} is not a device here; use auto, cpu, cuda or cuda:N")


def pick_device(name: str = "auto"):
    check_device(name)
    import torch  # here, not at the top: see the module's docstring
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name} asked for, but no CUDA GPU is visible; use --device cpu")
    return torch.device(name)
