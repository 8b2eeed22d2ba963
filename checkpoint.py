"""
Checkpoints: one file, a plain dict of tensors and primitive values, written atomically and read
with torch.load(weights_only=True), so that loading one never runs code.

    {"format": FORMAT, "version": VERSION,
     "config": GPTConfig as dict, "model": state_dict (no torch.compile/DDP prefixes),
     "optimizer": AdamW state_dict or None,
     "train": {step, max_iters, tokens, flops, done, rng, args} or None (stage progress),
     "meta": {size, flops_total (this stage and every ancestor), lineage: [...], expansion: {...}},
     "checksums": {name: CRC-32 of the tensor's bytes} for every tensor above (written by save)}

torch.load never checks the zip's own CRCs, so bytes overwritten inside a tensor would load silently:
save() writes a CRC-32 per tensor (about a tenth of the time of the write) and load() checks them,
and refuses weights that are NaN or Inf. Version 1 files (no checksums) still load.

A training run sharded with FSDP writes a folder instead (load_sharded): each rank's shards of the
model and AdamW state (torch.distributed.checkpoint), and the rest of that dict in SHARDED_META.
load() reads either in one process and returns the same dict.
"""
import hashlib
import json
import pickle
import zipfile
import zlib
from pathlib import Path

import torch

from model import GPT, GPTConfig, PRESETS
from util import UserError, atomic_write

FORMAT = "progressive-gpt-family"
VERSION = 2  # 2: per-tensor checksums
SHARDED_META = "meta.pt"  # in a sharded checkpoint's folder: the checkpoint dict without its tensors


class CheckpointError(UserError):
    pass


def size_name(cfg: GPTConfig) -> str:
    """The preset name of a config, or a description of it when it is custom."""
    for name, c in PRESETS.items():
        if c == cfg:
            return name
    return f"custom(L{cfg.n_layer},d{cfg.n_embd})"


def pack(cfg: GPTConfig, model_state: dict, optimizer_state=None, train=None, meta=None) -> dict:
    """The checkpoint dict from state dicts (train.py gathers them itself under FSDP)."""
    return {"format": FORMAT, "version": VERSION, "config": cfg.to_dict(),
            "model": {k: v.detach() for k, v in model_state.items()},
            "optimizer": optimizer_state, "train": train, "meta": {"size": size_name(cfg), **(meta or {})}}


def make_checkpoint(model: GPT, optimizer=None, train=None, meta=None) -> dict:
    return pack(model.cfg, model.state_dict(), optimizer.state_dict() if optimizer is not None else None,
                train, meta)


def tensors(obj, prefix=""):
    """(dotted name, tensor) for every tensor in nested dicts and lists: what the checksums cover."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from tensors(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from tensors(v, f"{prefix}.{i}")


def crc32(t: torch.Tensor) -> int:
    return zlib.crc32(t.detach().reshape(-1).contiguous().cpu().view(torch.uint8).numpy())


def save(path, ckpt: dict):
    """Atomic: write a temp file beside `path`, fsync, rename. Adds the checksums of its tensors."""
    body = {k: v for k, v in ckpt.items() if k != "checksums"}
    body["checksums"] = {name: crc32(t) for name, t in tensors(body)}
    atomic_write(path, lambda f: torch.save(body, f))


def identity(path) -> str:
    """A short hash of what a checkpoint holds, read from its zip's directory alone: the name, CRC-32
    and size of every record torch.save wrote (one per tensor, one for the rest). A sharded checkpoint
    (a folder) is stood for by its meta file, rewritten with every save."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path / SHARDED_META if path.is_dir() else path) as z:
            # names lose the archive's folder, which follows the file name
            records = sorted((i.filename.split("/", 1)[-1], i.CRC, i.file_size) for i in z.infolist())
    except (OSError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"checkpoint {path} is missing or not a checkpoint file ({type(e).__name__})") from e
    return hashlib.sha256(json.dumps(records, sort_keys=True).encode()).hexdigest()[:16]


def recovery(path: Path) -> str:
    """What a user can do about an unusable checkpoint: the other checkpoints beside it, or how to
    make it again when there are none."""
    others = sorted(p.name for p in path.parent.glob("*.pt") if p.is_file() and p.name != path.name)
    remake = "delete it and re-run the stage that wrote it (train.py without --resume, or expand.py)"
    if others:
        return f"other checkpoints beside it: {', '.join(others)}; or {remake}"
    return f"no other checkpoint is in {path.parent}; {remake}"


def check_tensors(path: Path, ckpt: dict, sums: dict | None):
    """Checksums (when the file has them) over every tensor, then finite weights."""
    if sums is not None:
        for name, t in tensors(ckpt):
            if sums.get(name) != crc32(t):
                raise CheckpointError(f"{path} is corrupt: tensor {name} does not match its checksum "
                                      f"(the file changed after it was written); {recovery(path)}")
    for name, t in (ckpt.get("model") or {}).items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise CheckpointError(f"{path} holds NaN or Inf in weight {name} (the run that wrote it "
                                  f"diverged); {recovery(path)}")


def check_archive(path: Path):
    """torch.save writes a zip, and torch.load checks none of its CRCs: read the pickled part (config,
    progress, history: what the tensor checksums do not cover) through zipfile, which does."""
    try:
        with zipfile.ZipFile(path) as z:
            for name in z.namelist():
                if name.endswith("/data.pkl"):
                    z.read(name)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:  # ValueError: a damaged zip index
        raise CheckpointError(f"{path} is corrupt or truncated ({e}); {recovery(path)}") from e


def load(path, map_location="cpu", mmap=False, verify=True, model=True, optimizer=True) -> dict:
    """mmap=True maps the tensors instead of reading them. verify=False skips the checksums and the
    NaN/Inf test, which read every tensor: for reading only config/meta/history. model/optimizer=False
    leave that part None and unread (a mapped file's other tensors are never touched; a sharded
    folder reads only the shards asked for, or just its meta file): weights-only readers pass
    optimizer=False, config/meta-only readers model=False too."""
    path = Path(path)
    if path.is_dir():
        return load_sharded(path, model, optimizer, verify)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    check_archive(path)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path} holds pickled objects beyond tensors and plain values; "
                              "refusing to load it (it could run code)") from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError, IndexError, TypeError,
            AttributeError) as e:  # a damaged index or a file of another kind fails in any of these
        raise CheckpointError(f"{path} is corrupt or truncated ({type(e).__name__}); {recovery(path)}") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a checkpoint of this project (no '{FORMAT}' header)")
    if not isinstance(ckpt.get("model"), dict) or not isinstance(ckpt.get("meta", {}), dict):
        raise CheckpointError(f"{path} has the header of this project's checkpoints but no weights ('model'); "
                              f"{recovery(path)}")
    for part, empty in (("optimizer", None), ("train", None), ("meta", {})):  # optional parts
        ckpt.setdefault(part, empty)
    if ckpt.get("version", 0) > VERSION:
        raise CheckpointError(f"{path} has format version {ckpt['version']}, newer than this code's "
                              f"{VERSION}; update the code")
    try:
        ckpt["config"] = GPTConfig.from_dict(ckpt["config"])
    except (TypeError, KeyError) as e:
        raise CheckpointError(f"{path} has an unreadable model config ({e})") from e
    sums = ckpt.pop("checksums", None)
    for part, wanted in (("model", model), ("optimizer", optimizer)):
        if not wanted:  # dropped before the checksums, which would read it
            ckpt[part] = None
    if verify:
        check_tensors(path, ckpt, sums)
    return ckpt


def load_sharded(path, model=True, optimizer=True, verify=True) -> dict:
    """A sharded checkpoint folder (train.py under FSDP) in one process, as load() returns a file:
    the full model state and AdamW's index-keyed state. model/optimizer=False leaves that part None
    and unread (e.g. to check a run before every rank loads its own shards). verify: the meta file's
    checksums and finite weights, as load() checks a file (the shards are read, not mapped)."""
    path = Path(path)
    ckpt = load(path / SHARDED_META, verify=verify)
    ckpt["model"] = ckpt["optimizer"] = None
    keys = {key for key, wanted in (("model", model), ("optim", optimizer)) if wanted}
    if not keys:
        return ckpt
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict
    state = {}
    try:  # what torch.distributed.checkpoint.format_utils.dcp_to_torch_save does, in memory
        _load_state_dict(state, storage_reader=FileSystemReader(path),
                         planner=_EmptyStateDictLoadPlanner(keys=keys), no_dist=True)
    except Exception as e:  # torch raises CheckpointException and others for missing or broken shards
        raise CheckpointError(f"{path}: its shards are missing or corrupt ({type(e).__name__}); "
                              "use an intact checkpoint or the previous one") from e
    if model:
        ckpt["model"] = state["model"]
    if optimizer:
        ckpt["optimizer"] = optim_by_index(state["optim"])
    if verify:
        check_tensors(path, ckpt, None)
    return ckpt


def optim_by_index(osd: dict) -> dict:
    """torch.distributed's name-keyed optimizer state -> AdamW's own index-keyed layout."""
    index = {n: i for i, n in enumerate(n for g in osd["param_groups"] for n in g["params"])}
    return {"state": {index[n]: v for n, v in osd["state"].items()},
            "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in osd["param_groups"]]}


def build_model(ckpt: dict, device="cpu", use_kernels=True) -> GPT:
    """The GPT of a loaded checkpoint, with its weights: built on the meta device, its parameters
    become the checkpoint's tensors (memory-mapped ones stay mapped), so no random model is made."""
    with torch.device("meta"):
        model = GPT(ckpt["config"], use_kernels=use_kernels)
    try:
        model.load_state_dict(ckpt["model"], assign=True)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint weights do not match its config: {str(e).splitlines()[0]}") from e
    return model.to(device)


def load_model(path, device="cpu", use_kernels=True):
    """(model in eval mode, checkpoint dict) from a checkpoint path."""
    ckpt = load(path, mmap=True, optimizer=False)
    model = build_model(ckpt, device, use_kernels)
    model.eval()
    return model, ckpt
