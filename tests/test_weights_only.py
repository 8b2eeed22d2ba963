"""Readers that need only weights or only config/meta read nothing else: the AdamW state (twice the
weights) is not read from a file (memory-mapped, not checksummed) nor from a sharded folder (its
shards are not requested); models are built on the meta device around the checkpoint's tensors."""
import resource
import sys

import pytest
import torch

import checkpoint
import evaluate
import expand
from conftest import run_script
from model import GPT, get_config, param_groups


def trained_state(size="20k"):
    """A model and an AdamW that has taken a step: its moments exist."""
    torch.manual_seed(0)
    model = GPT(get_config(size), use_kernels=False)
    opt = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-3)
    model(torch.zeros(1, 8, dtype=torch.long), torch.zeros(1, 8, dtype=torch.long))[1].backward()
    opt.step()
    return model, opt


def save_file(path, size="20k"):
    model, opt = trained_state(size)
    checkpoint.save(path, checkpoint.make_checkpoint(model, opt, meta={"lineage": []}))
    return model


def save_sharded(path, size="20k"):
    """A sharded folder as train.py writes it under FSDP (torch.distributed.checkpoint + meta.pt),
    written from one process."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict
    model, opt = trained_state(size)
    msd, osd = get_state_dict(model, opt)
    dcp.save({"model": msd, "optim": osd}, checkpoint_id=path)
    checkpoint.save(path / checkpoint.SHARDED_META, checkpoint.pack(model.cfg, {}, None, {"step": 1}, {"lineage": []}))
    return model


def model_bytes(model):
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


@pytest.fixture
def hashed(monkeypatch):
    """Bytes checksummed (each tensor a checkpoint's checksums cover is read whole to hash it)."""
    seen, crc32 = [0], checkpoint.crc32
    monkeypatch.setattr(checkpoint, "crc32", lambda t: (seen.__setitem__(0, seen[0] + t.numel() * t.element_size()),
                                                        crc32(t))[1])
    return seen


@pytest.fixture
def shards_read(monkeypatch):
    """The names of the sharded items torch.distributed.checkpoint is asked to read."""
    from torch.distributed.checkpoint import FileSystemReader
    names, read_data = [], FileSystemReader.read_data

    def spy(self, plan, planner):
        names.extend(item.storage_index.fqn for item in plan.items)
        return read_data(self, plan, planner)
    monkeypatch.setattr(FileSystemReader, "read_data", spy)
    return names


def test_file_weights_only_reads_no_adamw_state(tmp_path, hashed):
    model = save_file(tmp_path / "ckpt.pt")
    hashed[0] = 0
    full = checkpoint.load(tmp_path / "ckpt.pt", mmap=True)
    assert full["optimizer"]["state"] and hashed[0] > 3 * model_bytes(model)  # weights + 2 moments
    hashed[0] = 0
    ckpt = checkpoint.load(tmp_path / "ckpt.pt", mmap=True, optimizer=False)
    assert ckpt["optimizer"] is None and model_bytes(model) <= hashed[0] < 1.1 * model_bytes(model)
    built = checkpoint.build_model(ckpt)  # on meta, then the mapped tensors themselves: no other copy
    assert all(p.data_ptr() == ckpt["model"][n].data_ptr() for n, p in built.named_parameters())
    hashed[0] = 0
    members = evaluate.read_members([str(tmp_path / "ckpt.pt")], "progressive")
    assert members[0].cfg == get_config("20k") and hashed[0] == 0


def test_expand_reads_the_adamw_state_only_when_asked(tmp_path, hashed):
    src = save_file(tmp_path / "src.pt")
    hashed[0] = 0
    expand.main(["--src", str(tmp_path / "src.pt"), "--size", "50k", "--out", str(tmp_path / "out.pt")])
    grown = checkpoint.load(tmp_path / "out.pt")
    out_bytes = sum(t.numel() * t.element_size() for t in grown["model"].values())
    read = hashed[0] - 2 * out_bytes  # checksummed when written and when read back above
    assert grown["optimizer"] is None and model_bytes(src) <= read < 1.1 * model_bytes(src)
    hashed[0] = 0
    expand.main(["--src", str(tmp_path / "src.pt"), "--size", "50k", "--out", str(tmp_path / "opt.pt"),
                 "--optimizer_state"])
    assert hashed[0] >= 3 * (model_bytes(src) + out_bytes)  # the source's moments read, the grown ones written


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_sharded_folder_reads_only_what_is_asked(tmp_path, shards_read):
    path = tmp_path / "ckpt.pt"
    model = save_sharded(path)
    ckpt = checkpoint.load(path, mmap=True, optimizer=False)
    assert ckpt["optimizer"] is None and shards_read and all(n.startswith("model.") for n in shards_read)
    assert all(torch.equal(ckpt["model"][k], v) for k, v in model.state_dict().items())
    shards_read.clear()
    members = evaluate.read_members([str(path)], "progressive")  # config and meta: the meta file alone
    assert members[0].cfg == get_config("20k") and shards_read == []
    assert checkpoint.load(path)["optimizer"]["state"] and any(n.startswith("optim.") for n in shards_read)


READ_CONFIG = """
import resource, sys
import evaluate
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
m = evaluate.read_members([sys.argv[1]], "progressive")[0]
print(m.params, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)  # Linux: KiB
"""


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
@pytest.mark.slow  # writes a 2 GB sharded checkpoint (124m's weights and AdamW state)
def test_reading_a_sharded_members_config_reads_no_shard(tmp_path):
    path = tmp_path / "ckpt.pt"
    model = save_sharded(path, "124m")
    weights = model_bytes(model)
    del model
    r = run_script("-c", READ_CONFIG, path)
    assert r.returncode == 0, r.stderr[-2000:]
    params, grown = map(int, r.stdout.split())
    assert params == sum(p.numel() for p in GPT(get_config("124m")).parameters())
    assert grown < 0.02 * weights, (grown, weights)  # before: the whole folder, 3x the weights
