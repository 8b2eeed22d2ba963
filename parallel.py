"""
Support for train.py: the process group, DDP/FSDP wrapping, full and sharded training state, and the
per-GPU memory plan that chooses between DDP and FSDP (python flops.py --memory, --check, --layout
print it). train.py holds the training idea and calls these; nothing here imports train.py.

Under torchrun (RANK, WORLD_SIZE, LOCAL_RANK set) every process holds a model replica (DDP) or a
shard of it (FSDP2); a checkpoint is one file (written by rank 0) or, under FSDP, a folder of shards
(torch.distributed.checkpoint) that any world size reads back.
"""
import datetime
import os
import shutil
import sys
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist

import checkpoint
from model import GPT, GPTConfig, count_params, group_names
from util import UserError, pick_device


# ---------------------------------------------------------------------------------------------
# Process group (torchrun sets RANK, WORLD_SIZE, LOCAL_RANK)

@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def master(self) -> bool:
        return self.rank == 0


def env_dist() -> Dist:
    """This process's place in the job as torchrun's environment gives it (none: one process)."""
    if "RANK" not in os.environ:
        return Dist()
    try:
        return Dist(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"]))
    except (KeyError, ValueError) as e:
        raise UserError("bad torchrun environment: RANK, WORLD_SIZE and LOCAL_RANK must be integers; "
                        "launch with torchrun") from e


def init_distributed(device_name: str) -> tuple[Dist, torch.device]:
    if "RANK" not in os.environ:
        return Dist(), pick_device(device_name)
    d = env_dist()
    device = pick_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", d.local_rank)
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, d.world)))
    # a rank that dies must make the others fail, not wait forever in a collective
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                            timeout=datetime.timedelta(minutes=int(os.environ.get("DIST_TIMEOUT_MIN", 10))))
    return d, device


def teardown():
    """Destroy the process group, if one was set up (also after an error or Ctrl-C)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def leave(d: Dist, status: int = 0):
    """End a finished (or stopped: status != 0) multi-process run, after teardown()."""
    if d.world > 1:
        # DDP and FSDP keep the process group alive after destroy_process_group, and with it gloo's
        # worker threads. Were the interpreter torn down under them, a worker that still drops a
        # finished collective's tensors needs the GIL and Python ends it with pthread_exit, which
        # aborts the finished rank ("terminate called without an active exception", exit -6) on a
        # busy machine. Every rank is past the final barrier and the checkpoint is written: leave.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


def all_sum(d: Dist, t: torch.Tensor):
    """Sum `t` in place over the ranks."""
    if d.world > 1:
        dist.all_reduce(t)


def barrier(d: Dist):
    if d.world > 1:
        dist.barrier()


def any_rank(d: Dist, flag: bool, device: torch.device) -> bool:
    """True on every rank if it is true on one: a signal may reach the ranks at different steps."""
    if d.world == 1:
        return flag
    t = torch.tensor(float(flag), device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


# ---------------------------------------------------------------------------------------------
# Wrapping: DDP replicas or FSDP2 shards, activation checkpointing

def shard(model: GPT, dtype: torch.dtype):
    """FSDP2: each block, then the root, owns a shard of its parameters, gradients and AdamW state.
    bf16 runs compute in bf16 with fp32 master weights and fp32 gradient reductions."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    mp = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    for block in model.blocks:
        fully_shard(block, mp_policy=mp)
    fully_shard(model, mp_policy=mp)


def checkpoint_activations(model: GPT):
    """Each block keeps only its input for backward and recomputes the rest (torch.utils.checkpoint).
    The forward is replaced on the instance, so parameter names (checkpoints, FSDP) do not change."""
    from torch.utils.checkpoint import checkpoint
    for block in model.blocks:
        block.forward = partial(checkpoint, type(block).forward, block, use_reentrant=False)


def build_model(model_cfg: GPTConfig, layout: dict, d: Dist, device: torch.device, dtype: torch.dtype,
                seed: int, kernels: bool, weights: dict | None, initialise: bool = True) -> GPT:
    """The model on its device, its blocks checkpointed (layout["checkpointing"]), sharded under FSDP
    (before the optimizer is built: it must see the sharded parameters), with `weights` (a full state
    dict, memory-mapped) or else the seeded initialisation (initialise=False: neither, a sharded
    checkpoint fills it). Under FSDP it is built on the meta device and sharded first; each process
    then reads its shard of `weights`, or rank 0 alone initialises the full model, as one process
    does, and broadcasts it. No process builds a full copy it does not need."""
    fsdp = layout["strategy"] == "fsdp"
    seeded = weights is None and initialise and not fsdp
    if seeded:
        torch.manual_seed(seed)
        with device:  # on CUDA, drawn there: a billion normal draws on the host take minutes
            model = GPT(model_cfg, use_kernels=kernels)
    else:
        with torch.device("meta"):
            model = GPT(model_cfg, use_kernels=kernels)
    if layout["checkpointing"]:
        checkpoint_activations(model)
    if not fsdp:
        if weights is not None:
            load_weights(model, weights)
        elif not seeded:
            model.to_empty(device=device)
        return model.to(device)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    shard(model, dtype)
    model.to_empty(device=device)
    if not initialise:
        return model
    broadcast = weights is None
    if broadcast:
        weights = {}
        if d.master:
            torch.manual_seed(seed)
            with device:
                weights = GPT(model_cfg, use_kernels=False).state_dict()
    # the model's and the optimizer's setters apart: set_state_dict with empty dicts on the other
    # ranks hangs (../shared/docs/cpu-distributed.md)
    set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict=True,
                                                                  broadcast_from_rank0=broadcast))
    return model


def wrap(model: GPT, d: Dist, device: torch.device, fsdp: bool, compile: bool):
    """The module the training step calls: DDP around a replica (FSDP shards in place), compiled."""
    if d.world > 1 and not fsdp:
        from torch.nn.parallel import DistributedDataParallel as DDP
        # buckets as views of the gradients: no second gradient copy (memory_plan)
        model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None,
                    gradient_as_bucket_view=True)
    if compile:
        model = torch.compile(model)
    return model


def gradient_sync(wrapped, d: Dist, fsdp: bool, last: bool):
    """The context of a micro-step's backward. DDP all-reduces on a step's last micro-step only and
    skips the others under no_sync (its gradients are full replicas anyway). FSDP reduce-scatters
    every micro-step, into the gradient shard it accumulates: its no-sync mode
    (set_requires_gradient_sync(False)) would keep every parameter's whole unsharded fp32 gradient on
    every rank until the last micro-step (+16 GB per GPU at 4b), which the memory plan would then
    have to count; a reduce-scatter per micro-step costs communication, not memory."""
    if not fsdp and d.world > 1 and not last:
        return wrapped.no_sync()
    return nullcontext()


# ---------------------------------------------------------------------------------------------
# Training state: full (one file) or sharded (a folder, FSDP)

def load_weights(model: GPT, weights: dict):
    """A full state dict into a model built on the meta device: its tensors become the parameters
    (memory-mapped ones stay mapped until moved to the device)."""
    try:
        model.load_state_dict(weights, assign=True)
    except RuntimeError as e:
        raise checkpoint.CheckpointError(f"checkpoint weights do not match the model: "
                                         f"{str(e).splitlines()[0]}") from e


def optim_by_name(osd: dict, model) -> dict:
    """The inverse of checkpoint.optim_by_index, for a model laid out as group_names() says."""
    names = [n for group in group_names(model) for n in group]
    return {"state": {names[i]: v for i, v in osd["state"].items()},
            "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in osd["param_groups"]]}


def load_optimizer(model: GPT, optimizer, optim_sd: dict, fsdp: bool):
    """Load the full (unsharded) AdamW state, as checkpoint files hold it, whatever the world size."""
    if not fsdp:
        optimizer.load_state_dict(optim_sd)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
    set_optimizer_state_dict(model, optimizer, optim_by_name(optim_sd, model),
                             options=StateDictOptions(full_state_dict=True))


def load_sharded(model: GPT, optimizer, path: Path):
    """Model and AdamW state from a sharded checkpoint, whatever world size and wrapper wrote or
    reads it: each rank reads what it keeps (torch.distributed.checkpoint reshards)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    msd, osd = get_state_dict(model, optimizer)  # templates; also creates AdamW's state
    state = {"model": msd, "optim": osd}
    dcp.load(state, checkpoint_id=path)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])


def save_state(path: Path, model_cfg: GPTConfig, model: GPT, optimizer, train: dict, meta: dict,
               d: Dist, fsdp: bool):
    """A training checkpoint at `path`: under FSDP a sharded folder (resumable on any world size;
    checkpoint.load reads it), else one file written by rank 0."""
    if fsdp:
        _save_sharded(path, model, optimizer, checkpoint.pack(model_cfg, {}, None, train, meta), d)
    elif d.master:
        ckpt = checkpoint.pack(model_cfg, model.state_dict(), optimizer.state_dict(), train, meta)
        if path.is_dir():  # resumed from a sharded checkpoint on one process or under DDP
            checkpoint.save(path.with_name(path.name + ".tmp"), ckpt)
            replace_path(path.with_name(path.name + ".tmp"), path)
        else:
            checkpoint.save(path, ckpt)


def _save_sharded(path: Path, model: GPT, optimizer, head: dict, d: Dist):
    """FSDP: every rank writes its shards and rank 0 the rest (checkpoint.SHARDED_META) into a
    folder beside `path`, which then replaces it: nothing is gathered, and a run killed while
    writing keeps the previous checkpoint."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict
    tmp = path.with_name(path.name + ".tmp")
    if d.master:
        shutil.rmtree(tmp, ignore_errors=True)
    dist.barrier()
    msd, osd = get_state_dict(model, optimizer)
    dcp.save({"model": msd, "optim": osd}, checkpoint_id=tmp)
    if d.master:
        checkpoint.save(tmp / checkpoint.SHARDED_META, head)
        replace_path(tmp, path)
    dist.barrier()


def replace_path(tmp: Path, path: Path):
    """Put `tmp` at `path`, either of them a file or a folder (a run resumed on another world size may
    switch between one-file and sharded checkpoints); a run killed in between keeps PATH.old."""
    old = path.with_name(path.name + ".old")
    remove_path(old)  # left by a run killed in here (finish_replace)
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    remove_path(old)


def remove_path(path: Path):
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def finish_replace(path: Path):
    """A run killed between replace_path's two renames left no `path`: put back the newest complete
    checkpoint beside it (PATH.tmp when it was fully written, else PATH.old)."""
    tmp, old = path.with_name(path.name + ".tmp"), path.with_name(path.name + ".old")
    if path.exists():
        return
    for src in (tmp, old):  # a sharded .tmp is complete once its SHARDED_META is written, the last file
        if src.is_file() or (src / checkpoint.SHARDED_META).is_file():
            try:
                src.rename(path)
            except FileNotFoundError:  # another rank put it back first
                pass
            return


# ---------------------------------------------------------------------------------------------
# Memory per GPU: DDP replicates the training state on every GPU, FSDP (full shard) splits it.
# Units: bytes, reported in GB = 1e9 bytes everywhere (memory_layout converts the device's memory so too).

GB = 1e9
GPU_MEM_USABLE = 0.9  # CUDA context, allocator fragmentation and temporary buffers take the rest
# Micro-batch (sequences per process per micro-step) chosen by choose_layout: at most MAX (the
# previous fixed default), and without activation checkpointing at least MIN: below that, each
# micro-step's FSDP gathers and per-step overheads weigh more than recomputing a forward (+1/3 FLOPs).
MAX_MICRO_BATCH, MIN_MICRO_BATCH = 16, 4


def activation_parts(cfg: GPTConfig, micro_batch: int, seq_len: int, compute: int = 2,
                     residual: int | None = None) -> dict:
    """Bytes of activations kept for the backward pass: per block, a block's input, and the head.

    Korthikanti et al. 2022 (Reducing Activation Recomputation), Eq. 1, per layer:
    s*b*h*(34 + 5*a*s/h) bytes for 16-bit activations, with dropout and an unfused attention.
    Our blocks have no dropout (-2*s*b*h of masks; of the 5*a*s^2*b only the softmax's 2*a*s^2*b
    would remain) and attention is a fused flash kernel (on GPU, and SDPA's default on CPU) that
    stores no s x s matrix, only its fp32 log-sum-exp (4*a*s*b). Per layer in bf16: s*b*(32*h + 4*a),
    16 tensors of s*b*h elements. The two LayerNorm inputs are residual-stream tensors: under
    autocast over fp32 weights (DDP) the residual stream stays fp32 (`residual` = 4 bytes, 2 more per
    element each). Head: its input (ln_f's input and output), the logits that forward returns and
    the fp32 log-softmax the loss keeps (4*s*b*V). `compute`: bytes per element of the matmuls' inputs
    and outputs (2 bf16, 4 fp32). tests/test_flops.py checks it against the tensors autograd saves.
    """
    s, b, h, a, V = seq_len, micro_batch, cfg.n_embd, cfg.n_head, cfg.vocab_size
    r = compute if residual is None else residual
    # the 16 h: two norm inputs and outputs, q, k, v, attention output (8 h), the MLP's hidden
    # twice (8 h at d_ff = 4 h). Llama members: k and v are n_kv_head heads wide, and SwiGLU keeps
    # four d_ff-wide tensors (gate, silu(gate), up, their product) where GELU keeps two
    kv = cfg.kv_heads * cfg.head_dim
    elements = 6 * h + 2 * kv + (4 if cfg.mlp == "swiglu" else 2) * cfg.d_ff
    return {"block": s * b * (elements * compute + 2 * (r - compute) * h + 4 * a),
            "block_input": s * b * h * r,
            "head": s * b * ((r + compute) * h + compute * V + 4 * V)}


def activation_bytes(cfg: GPTConfig, micro_batch: int, seq_len: int, checkpointing: bool = False,
                     compute: int = 2, residual: int | None = None) -> float:
    """Peak activation bytes of a micro-step (see activation_parts). With activation checkpointing
    (per block) a block keeps only its input, and backward recomputes one block at a time, whose
    activations then live on top of the inputs."""
    p = activation_parts(cfg, micro_batch, seq_len, compute, residual)
    if checkpointing:
        return cfg.n_layer * p["block_input"] + p["block"] + p["head"]
    return cfg.n_layer * p["block"] + p["head"]


def memory_plan(cfg: GPTConfig, nproc: int, micro_batch: int, seq_len: int | None = None,
                gpu_mem_gb: float = 80.0, checkpointing: bool = False, mixed_precision: bool = True) -> dict:
    """Estimated bytes per GPU under DDP and under FSDP (full shard) as train.py runs them, and
    whether each fits.

    Training state, 16 bytes per parameter (the ZeRO paper's accounting, Rajbhandari et al. 2020):
    fp32 weights 4, fp32 gradients 4, AdamW's fp32 moments m, v 8. DDP holds all of it on every
    GPU; its gradient buckets are views of the gradients (wrap: gradient_as_bucket_view), so
    they add nothing, but bf16 autocast adds the bf16 copy of every weight that it casts for the
    matmuls and keeps for backward (2 bytes per parameter). FSDP holds 1/nproc of the state plus a
    working set: the unsharded compute-dtype weights and gradients of the root unit (embeddings,
    final norm, head; gathered through forward and backward) and of two blocks (the current one and
    the prefetched next), and one block's fp32 gradients for the reduce-scatter. Activations are per
    GPU under both (activation_bytes): fp32 residual stream under DDP's autocast, all bf16 under
    FSDP's mixed precision. mixed_precision=False is an fp32 run (CPU's default): no copies, 4-byte
    activations. Both add the cross-entropy backward's transient (loss_backward): at the start of
    backward, with every activation still kept, the fp32 gradients of the log-softmax output and of
    the logits (8 bytes x tokens x vocab; 6.6 GB for 1024 x 16 tokens of GPT-2's vocabulary). FSDP
    holds no unsharded gradient across micro-steps (gradient_sync reduce-scatters every one), DDP's
    accumulated gradients are the state's. A strategy fits when its total is at most GPU_MEM_USABLE
    of gpu_mem_gb. Estimates, not measurements: the activations are checked against what autograd
    saves (tests/test_flops.py); the working sets, the transient and the usable fraction are not
    measured on a GPU yet (docs/gpu.md).
    """
    if nproc < 1:
        raise UserError(f"nproc must be >= 1, got {nproc}")
    if micro_batch < 1:
        raise UserError(f"micro_batch must be >= 1, got {micro_batch}")
    if not gpu_mem_gb > 0:
        raise UserError(f"gpu_mem_gb must be > 0, got {gpu_mem_gb}")
    seq_len = cfg.block_size if seq_len is None else seq_len
    n = count_params(cfg)
    root = n["embedding"] + cfg.vocab_size * cfg.n_embd + 2 * cfg.n_embd  # wte, wpe, head, ln_f
    block = (n["total"] - root) / cfg.n_layer
    compute = 2 if mixed_precision else 4
    state = {"weights": 4 * n["total"], "grads": 4 * n["total"], "moments": 8 * n["total"]}
    usable = GPU_MEM_USABLE * gpu_mem_gb * GB
    ddp = {**state, "state": sum(state.values()), "working_set": 2 * n["total"] if mixed_precision else 0,
           "activations": activation_bytes(cfg, micro_batch, seq_len, checkpointing, compute, residual=4)}
    fsdp = {**{k: v / nproc for k, v in state.items()}, "state": sum(state.values()) / nproc,
            "working_set": 2 * compute * (root + 2 * block) + 4 * block,
            "activations": activation_bytes(cfg, micro_batch, seq_len, checkpointing, compute)}
    for d in (ddp, fsdp):
        d["loss_backward"] = 8 * seq_len * micro_batch * cfg.vocab_size
        d["total"] = d["state"] + d["working_set"] + d["activations"] + d["loss_backward"]
        d["fits"] = d["total"] <= usable
    return {"params": n["total"], "nproc": nproc, "micro_batch": micro_batch, "seq_len": seq_len,
            "gpu_mem_gb": gpu_mem_gb, "usable_bytes": usable, "checkpointing": checkpointing,
            "ddp": ddp, "fsdp": fsdp}


def choose_strategy(cfg: GPTConfig, nproc: int, micro_batch: int, seq_len: int | None = None,
                    gpu_mem_gb: float = 80.0, strategy: str = "auto", checkpointing: str = "auto",
                    mixed_precision: bool = True) -> dict:
    """How train.py runs a micro-batch: the first that fits of DDP, then FSDP, without activation
    checkpointing, then the same with it (a recomputed forward costs a third more FLOPs, FSDP only
    communication). strategy ("ddp", "fsdp") and checkpointing ("on", "off") other than "auto" pin
    that choice; one process is "single" (planned as DDP). When nothing fits, the last candidate,
    with fits False: {"strategy", "checkpointing", "bytes", "usable_bytes", "fits"}."""
    strategies = ["single"] if nproc == 1 else ["ddp", "fsdp"] if strategy == "auto" else [strategy]
    for ckpt in [False, True] if checkpointing == "auto" else [checkpointing == "on"]:
        m = memory_plan(cfg, nproc, micro_batch, seq_len, gpu_mem_gb, ckpt, mixed_precision)
        for s in strategies:
            row = m["fsdp" if s == "fsdp" else "ddp"]
            choice = {"strategy": s, "checkpointing": ckpt, "bytes": row["total"],
                      "usable_bytes": m["usable_bytes"], "fits": row["fits"]}
            if choice["fits"]:
                return choice
    return choice


def choose_layout(cfg: GPTConfig, nproc: int, global_batch: int, seq_len: int | None = None,
                  gpu_mem_gb: float = 80.0) -> dict:
    """Micro-batch, gradient accumulation, strategy and activation checkpointing of a stage whose
    optimizer step sees global_batch sequences: global_batch = nproc x micro_batch x grad_accum.
    The largest micro-batch (a divisor of the per-process batch, at most MAX_MICRO_BATCH) that fits
    without activation checkpointing, down to MIN_MICRO_BATCH; else the largest that fits with it;
    else the smallest, with fits False."""
    if nproc < 1 or global_batch % nproc:
        raise UserError(f"{nproc} processes do not divide the global batch of {global_batch} sequences; "
                        f"use a process count (NPROC) that divides it")
    per_rank = global_batch // nproc
    micros = [m for m in range(min(per_rank, MAX_MICRO_BATCH), 0, -1) if per_rank % m == 0]
    for ckpt in ("off", "on"):
        for m in micros:
            if ckpt == "off" and m < min(MIN_MICRO_BATCH, per_rank):
                break
            choice = choose_strategy(cfg, nproc, m, seq_len, gpu_mem_gb, checkpointing=ckpt)
            if choice["fits"]:
                break
        if choice["fits"]:
            break
    return {"micro_batch": m, "grad_accum": per_rank // m, **choice}

def available_ram() -> float:
    """Bytes of host memory available to new allocations (Linux: MemAvailable; else the total)."""
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


# --fsdp as choose_strategy takes it, the same on every device
FSDP_FLAG = {"on": "fsdp", "off": "ddp", "auto": "auto"}


def memory_budget(gpu_mem: float, d: Dist, device: torch.device) -> tuple[float, str]:
    """(GB, what they are) a process plans for: `gpu_mem` (train.py --gpu_mem: the budget run_family.sh
    planned the layout for) when given, but at most what the device has: the GPU's memory, on CPU this
    process's share of the host's available RAM. A GPU that is not here (a dry run on a CPU-only
    machine, --device cuda) has only `gpu_mem`."""
    have = None
    if device.type == "cuda" and torch.cuda.is_available():
        have, where = torch.cuda.get_device_properties(device).total_memory / GB, "GPU memory"
    elif device.type == "cpu":
        local = int(os.environ.get("LOCAL_WORLD_SIZE", d.world))
        have, where = available_ram() / GB / local, "available host RAM per process"
    if gpu_mem > 0 and (have is None or gpu_mem <= have):
        return gpu_mem, "planning budget (--gpu_mem)"
    if have is None:
        raise UserError(f"no {device} here to read its memory from; give --gpu_mem (GB per GPU) to plan for one")
    return have, where


def memory_layout(cfg, model_cfg: GPTConfig, d: Dist, device: torch.device, seq_len: int,
                  dtype: torch.dtype) -> dict:
    """Strategy (single, ddp, fsdp) and activation checkpointing from the memory plan of this run
    (--fsdp and --activation_checkpointing pin them; auto: the first that fits) for its memory_budget;
    refuses a run that does not fit. `cfg`: train.py's TrainConfig. Adds the budget's "gpu_mem_gb"."""
    mem, where = memory_budget(cfg.gpu_mem, d, device)
    c = choose_strategy(model_cfg, d.world, cfg.batch_size, seq_len, mem, FSDP_FLAG[cfg.fsdp],
                        cfg.activation_checkpointing, mixed_precision=dtype != torch.float32)
    if cfg.memory_check and not c["fits"]:
        raise UserError(f"--size {cfg.size} does not fit: planned {c['bytes'] / GB:.1f} GB per process "
                        f"({c['strategy']}, micro-batch {cfg.batch_size}, activation checkpointing "
                        f"{'on' if c['checkpointing'] else 'off'}) > {c['usable_bytes'] / GB:.1f} GB usable "
                        f"of {mem:.1f} GB {where}; lower --batch_size and raise --grad_accum, use "
                        f"--activation_checkpointing on or --fsdp on, or more GPUs (python flops.py --check)")
    return {**c, "gpu_mem_gb": mem}
