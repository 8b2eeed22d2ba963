"""Small pieces every script shares: user-facing errors, atomic writes, device choice."""
import json
import os
import sys
import tempfile
from pathlib import Path

import torch


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
        reason = e.strerror if isinstance(e, OSError) else str(e).splitlines()[-1]
        raise UserError(f"writing {path} failed ({reason}); the previous file, if any, is intact") from e
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    dir_fd = os.open(path.parent, os.O_RDONLY)  # make the rename itself durable
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_json(path, obj):
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2) + "\n"), mode="w")


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name} asked for, but no CUDA GPU is visible; use --device cpu")
    return torch.device(name)
