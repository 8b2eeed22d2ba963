"""
Train one stage of a model family: from scratch, or from a grown checkpoint (expand.py).

    python train.py --size 20k --data data/openstax_bytes --tokens 400_000 --out runs/20k
    torchrun --nproc_per_node=8 train.py --size 2b --init ckpt_1b_expanded.pt --tokens 60e9 ...

One optimizer step sees batch_size x grad_accum x world_size sequences of seq_len tokens. The
batch of step s is a pure function of (seed, stage, s), where stage is the number of ancestors the
--init checkpoint has (0 from scratch): resuming at step s, or running on another number of
processes, sees exactly the same data, and a grown stage draws its own batches instead of
replaying the ones its ancestors trained on. A checkpoint (checkpoint.py) is written atomically every
--ckpt_interval steps (and --ckpt_every_min minutes) and at the end; `--resume` continues from it bit for bit.
"""
import argparse
import dataclasses
import fcntl
import hashlib
import json
import math
import os
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from util import (ArgumentParser, UserError, atomic_write, check_args, check_device, check_ranges,
                  pick_device, run_cli)  # first: see util.py


def _opt(default, help, **kw):
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    size: str = _opt("", "model preset (python flops.py --presets lists them)")
    data: str = _opt("", "folder made by data/prepare.py (train.bin, val.bin, meta.json)")
    out: str = _opt("out", "run folder: checkpoint, metrics.jsonl, train.log")
    ckpt: str = _opt("", "checkpoint path (default: OUT/ckpt.pt)")
    init: str = _opt("", "start from this checkpoint's weights (e.g. from expand.py); else random init")
    resume: bool = _opt(False, "continue from --ckpt if it exists (else start fresh)")
    overwrite: bool = _opt(False, "start over even though --ckpt holds a checkpoint, replacing it (without "
                                   "--resume or this flag such a run is refused)")
    stop_at: int = _opt(0, "checkpoint and exit after this step, to split a stage across jobs "
                           "(continue with --resume); the exit status is 3: the stage is not finished")
    tokens: float = _opt(0, "stage budget in training tokens (or give --max_iters)")
    max_iters: int = _opt(0, "number of optimizer steps (overrides --tokens)")
    batch_size: int = _opt(0, "sequences per micro-step per process (default: the family's batch, flops.py, "
                              "over grad_accum x processes)")
    grad_accum: int = _opt(1, "micro-steps per optimizer step")
    seq_len: int = _opt(0, "tokens per sequence (default: the model's context)")
    lr: float = _opt(0, "max learning rate (default: the family's for --size, flops.py --lr_schedule adjusted)")
    min_lr: float = _opt(-1, "final learning rate (default: lr / 10, the family's)")
    warmup: int = _opt(-1, "linear warmup steps (default: the family's, 5%% of the stage's tokens)")
    schedule: str = _opt("", "cosine (default, the family's): warmup, cosine decay to min_lr; wsd: warmup, "
                             "constant, linear decay over the last --decay_frac", choices=["cosine", "wsd"])
    decay_frac: float = _opt(0.2, "wsd: share of the steps spent decaying")
    branches: str = _opt("", "wsd: comma-separated fractions F of this run's steps; at the step where a run "
                             "of F x the steps would start its decay, also write CKPT_branchN.pt (N = that "
                             "run's steps), from which --branch_from finishes that shorter run")
    branch_from: str = _opt("", "wsd: continue a --branches checkpoint of a longer run as this run (same "
                                "settings, fewer steps): its stable phase is this run's, so only the rest "
                                "is trained")
    stable_ckpt: str = _opt("", "wsd: also write a checkpoint here when the decay starts (the end of the "
                                "stable phase), to grow the next member from (run_family.sh GROW_FROM=stable)")
    weight_decay: float = _opt(0.1, "AdamW weight decay (matrices and embeddings only)")
    beta1: float = _opt(0.9, "AdamW beta1")
    beta2: float = _opt(0.95, "AdamW beta2")
    grad_clip: float = _opt(1.0, "clip the global gradient norm to this (0: off)")
    dtype: str = _opt("auto", "compute dtype (auto: bfloat16 autocast on CUDA, float32 on CPU)",
                      choices=["auto", "float32", "bfloat16"])
    compile: str = _opt("auto", "torch.compile the model (auto: on CUDA only; on CPU it did not pay "
                                "for the tiny family, see bench/)", choices=["auto", "on", "off"])
    kernels: bool = _opt(True, "use the Triton kernels of gpt_kernels.py on CUDA")
    device: str = _opt("auto", "cpu, cuda, cuda:N or auto")
    seed: int = _opt(1337, "seed of the initialization and of the data order")
    eval_interval: int = _opt(0, "steps between validation losses (default: 10 per stage)")
    eval_tokens: int = _opt(131072, "validation tokens per evaluation")
    log_interval: int = _opt(0, "steps between log lines (default: about 50 per stage)")
    ckpt_interval: int = _opt(0, "steps between checkpoints (default: the eval interval)")
    log_every_min: float = _opt(1.0, "also a log line (not a metrics row) when this many minutes passed "
                                     "since the last one, so a long run's steps show signs of life (0: off)")
    ckpt_every_min: float = _opt(0.0, "also a checkpoint when this many minutes passed since the last one, "
                                      "so a preempted run loses at most that (0: off; run_family.sh: 30 on GPUs)")
    on_nan: str = _opt("stop", "non-finite loss or gradient: stop (keep the last good checkpoint) "
                               "or skip the step (stops after 10 in a row)", choices=["stop", "skip"])
    peak_flops: float = _opt(0, "device peak FLOP/s for MFU (default: known GPUs; none on CPU)")
    fsdp: str = _opt("auto", "under torchrun, shard parameters, gradients and optimizer state with "
                             "FSDP2 (auto: when DDP would not fit the memory budget, see flops.py "
                             "--memory; the same on every device)", choices=["auto", "on", "off"])
    activation_checkpointing: str = _opt("auto", "recompute each block's activations in backward instead of "
                                                 "keeping them (auto: when the memory plan needs it)",
                                         choices=["auto", "on", "off"])
    gpu_mem: float = _opt(0, "GB (1e9 bytes) per process the memory plan may use, at most what the device "
                             "has (default: the GPU's memory; on CPU the available RAM per process); "
                             "run_family.sh passes the GPU_MEM its layout was planned for")
    dry_run: bool = _opt(False, "print the layout (strategy, micro-batch, accumulation, activation "
                                "checkpointing) and planned memory per process this command would train "
                                "with, and exit: nothing is read or built, no GPU is needed (--device cuda "
                                "--gpu_mem GB plans for one); the world size is torchrun's WORLD_SIZE")
    memory_check: bool = _opt(True, "refuse a run whose memory plan (flops.py) does not fit the GPU, or "
                                    "the available host RAM on CPU (--no_memory_check: start anyway)")


# Settings that must not change when a run is resumed: the data order and the schedule depend on them.
# The batch is compared across all processes (batch_size x world size), so any world size may resume.
RESUME_KEYS = ("size", "tokens", "max_iters", "grad_accum", "seq_len",
               "lr", "min_lr", "warmup", "schedule", "decay_frac", "seed", "global_batch")
# --data and --init must not change either, but they are compared by content (source_ids), not by how
# the path is spelled: a relative or absolute path to the same folder, or a moved run folder, resumes.
SOURCE_KEYS = ("data", "init")


def parse_args(argv=None) -> TrainConfig:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in dataclasses.fields(TrainConfig):
        kw = {"default": f.default, "help": f.metadata["help"]}
        if f.type is bool:
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw["type"] = {"int": int, "float": float, "str": str}[f.type if isinstance(f.type, str)
                                                                  else f.type.__name__]
            kw["choices"] = f.metadata.get("choices")
        p.add_argument(f"--{f.name}", **kw)
    cfg = TrainConfig(**vars(p.parse_args(argv)))
    if not cfg.size or not cfg.data:
        raise UserError("--size and --data are required (python train.py --help)")
    if cfg.tokens <= 0 and cfg.max_iters <= 0:
        raise UserError("give the stage budget: --tokens N (> 0) or --max_iters N (> 0)")
    if not 0 <= cfg.seed < 2**63:  # torch.manual_seed takes a 64-bit integer
        raise UserError(f"--seed {cfg.seed} is out of range; use an integer from 0 to 2**63 - 1")
    check_numbers(cfg)
    check_device(cfg.device)
    if not min(cfg.gpu_mem, cfg.log_every_min, cfg.ckpt_every_min) >= 0:
        raise UserError("--gpu_mem, --log_every_min and --ckpt_every_min must be >= 0 (0: default or off)")
    if (cfg.stable_ckpt or cfg.branches or cfg.branch_from) and cfg.schedule != "wsd":
        raise UserError("--stable_ckpt, --branches and --branch_from need --schedule wsd: only WSD has a "
                        "stable phase to branch from")
    try:
        fractions = [float(f) for f in cfg.branches.split(",") if f.strip()]
    except ValueError:
        fractions = [-1.0]
    if not all(0 < f < 1 for f in fractions):
        raise UserError(f"--branches {cfg.branches!r}: give comma-separated fractions between 0 and 1 "
                        f"(exclusive) of this run's steps, e.g. 0.25,0.5,0.75")
    return cfg


def check_numbers(cfg: TrainConfig):
    """Every numeric flag: finite, in its range, and consistent with the others. 0 picks the family's
    --lr and --batch_size (with_recipe); -1 is the default of --min_lr (lr / 10) and --warmup (the
    family's share of the tokens); 0 turns --grad_clip and --stop_at off and picks the default of
    --seq_len and the intervals."""
    check_ranges(cfg, {"tokens": "[0, inf)", "max_iters": "[0, inf)", "batch_size": "[0, inf)",
                       "grad_accum": "[1, inf)", "seq_len": "[0, inf)", "lr": "[0, inf)",
                       "decay_frac": "[0, 1]", "weight_decay": "[0, inf)", "beta1": "[0, 1)", "beta2": "[0, 1)",
                       "grad_clip": "[0, inf)", "stop_at": "[0, inf)", "eval_interval": "[0, inf)",
                       "eval_tokens": "[1, inf)", "log_interval": "[0, inf)", "ckpt_interval": "[0, inf)",
                       "peak_flops": "[0, inf)"})
    if cfg.min_lr != -1:  # a schedule that decays, never climbs (with the family's LR: with_recipe)
        check_ranges(cfg, {"min_lr": f"[0, {cfg.lr!r}]" if cfg.lr else "[0, inf)"})
    if cfg.warmup != -1:
        check_ranges(cfg, {"warmup": "[0, inf)"})


# --help and usage errors are answered above this line, before torch loads (seconds on a busy machine)
check_args(__name__, parse_args)
import numpy as np  # noqa: E402
import torch  # noqa: E402

import checkpoint  # noqa: E402
from data import open_split, val_windows  # noqa: E402
from flops import MIN_LR_RATIO, SCHEDULE, device_peak, recipe, train_flops_per_token, warmup_steps  # noqa: E402
from expand import block_label, twins  # noqa: E402
from model import get_config, param_groups  # noqa: E402
import parallel  # noqa: E402


STOPPED_AT = 3  # exit status of a run that --stop_at stopped before the end of its stage

# ---------------------------------------------------------------------------------------------
# Data

def get_batch(tokens: np.ndarray, seq_len: int, n: int, seed: int, step: int, micro: int, stage: int = 0):
    """n windows of seq_len+1 tokens at offsets drawn from (seed, step, micro, stage): reproducible.
    Stage 0 (a run from scratch) keeps the key without the stage."""
    key = [seed, step, micro] + ([stage] if stage else [])
    ix = np.random.default_rng(key).integers(0, len(tokens) - seq_len - 1, size=n)
    xy = torch.from_numpy(np.stack([tokens[i:i + seq_len + 1].astype(np.int64) for i in ix]))
    return xy[:, :-1], xy[:, 1:]


def check_data(meta: dict, model_cfg, data_dir: str):
    if meta["tokenizer"] != model_cfg.tokenizer or meta["vocab_size"] > model_cfg.vocab_size:
        raise UserError(f"{data_dir} was tokenized with {meta['tokenizer']} (vocab {meta['vocab_size']}) "
                        f"but the model expects {model_cfg.tokenizer} (vocab {model_cfg.vocab_size}); "
                        f"prepare the data with --tokenizer {model_cfg.tokenizer}")


def source_ids(data_meta: dict, init: str) -> dict:
    """What --data and --init hold, as short hashes: the data folder's meta.json (its tokenizer,
    token counts and the fingerprint of its inputs) and checkpoint.identity of --init."""
    def digest(obj) -> str:
        return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]
    return {"data": digest(data_meta), "init": checkpoint.identity(init) if init else ""}


# ---------------------------------------------------------------------------------------------
# Optimizer and schedule

def compute_choices(cfg: TrainConfig, device: torch.device) -> tuple[torch.dtype, bool]:
    """(compute dtype, torch.compile?) as --dtype and --compile resolve on this device. auto:
    bfloat16 autocast and compile on CUDA; float32 eager on CPU, where compile and bfloat16 did not
    pay for the tiny family (bench/cpu.py times this choice against a plain step)."""
    use_cuda = device.type == "cuda"
    dtype = {"auto": torch.bfloat16 if use_cuda else torch.float32,
             "float32": torch.float32, "bfloat16": torch.bfloat16}[cfg.dtype]
    return dtype, cfg.compile == "on" or (cfg.compile == "auto" and use_cuda)


def decay_start(cfg: TrainConfig, max_iters: int) -> int:
    """wsd: the first step of the decay, i.e. the number of steps before it."""
    return int(max_iters * (1 - cfg.decay_frac))


def with_recipe(cfg: TrainConfig, world: int) -> TrainConfig:
    """cfg with the family's recipe (flops.recipe) where a setting was left out: the max LR, the final
    LR, the schedule and the micro-batch that makes the family's batch with --grad_accum on `world`
    processes (the warmup, a share of the steps, is resolved with them: resolve_warmup)."""
    r = {} if cfg.lr and cfg.batch_size else recipe(cfg.size)  # a size in no family has none: give both
    lr = cfg.lr or r["lr"]
    batch = cfg.batch_size or r["batch_size"] // (cfg.grad_accum * world)
    if not cfg.batch_size and batch * cfg.grad_accum * world != r["batch_size"]:
        raise UserError(f"--grad_accum {cfg.grad_accum} x {world} processes do not divide the {cfg.size} family's "
                        f"batch of {r['batch_size']} sequences; give --batch_size")
    cfg = dataclasses.replace(cfg, lr=lr, min_lr=cfg.min_lr if cfg.min_lr >= 0 else lr * MIN_LR_RATIO,
                              batch_size=batch, schedule=cfg.schedule or SCHEDULE)
    check_ranges(cfg, {"min_lr": f"[0, {lr!r}]"})
    return cfg


def resolve_warmup(cfg: TrainConfig, max_iters: int, step_tokens: int) -> int:
    """--warmup, or the family's: its fraction of the stage's tokens (all of max_iters' steps if given)."""
    if cfg.warmup >= 0:
        return cfg.warmup
    return warmup_steps(max_iters * step_tokens if cfg.max_iters else cfg.tokens, step_tokens)


def branch_points(cfg: TrainConfig, max_iters: int) -> dict[int, list[int]]:
    """--branches: {step: [N, ...]}, the steps at which runs of N = round(F x max_iters) steps start
    their decay. Up to there such a run's schedule is this run's (the same warmup steps, then the same
    constant LR), so a checkpoint written there is also theirs (Hagele et al. 2024)."""
    points = {}
    for f in (float(x) for x in cfg.branches.split(",") if x.strip()):
        n = max(1, round(f * max_iters))
        points.setdefault(decay_start(cfg, n), []).append(n)
    return points


def branch_path(ckpt: Path, n: int) -> Path:
    return ckpt.with_name(f"{ckpt.stem}_branch{n}{ckpt.suffix}")


def lr_at(step: int, cfg: TrainConfig, max_iters: int, warmup: int) -> float:
    min_lr = cfg.lr * MIN_LR_RATIO if cfg.min_lr < 0 else cfg.min_lr
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    if cfg.schedule == "wsd":
        start = decay_start(cfg, max_iters)
        if step < start:
            return cfg.lr
        return cfg.lr + (min_lr - cfg.lr) * (step - start) / max(1, max_iters - start)
    progress = (step - warmup) / max(1, max_iters - warmup)
    return min_lr + 0.5 * (cfg.lr - min_lr) * (1 + math.cos(math.pi * progress))


class Every:
    """A wall-clock interval: due() is true once `minutes` have passed since the start or the last
    reset (then it resets); never with minutes 0. `clock` in seconds (tests pass a fake one)."""

    def __init__(self, minutes: float, clock=time.monotonic):
        self.minutes, self.clock = minutes, clock
        self.reset()

    def reset(self):
        self.last = self.clock()

    def due(self) -> bool:
        if not self.minutes or self.clock() - self.last < 60 * self.minutes:
            return False
        self.reset()
        return True


# ---------------------------------------------------------------------------------------------

class Trainer:
    """One stage of training. run() is the loop; the rest sets it up (__init__, _build), checkpoints
    it (save, _resume), and logs; parallel.py does the process group, wrapping and sharded state."""

    def run(self):
        """The stage: optimizer steps on the LR schedule, with log lines, evaluations and checkpoints at
        their intervals; a stop request (signal, Ctrl-C, --stop_at) checkpoints and leaves."""
        cfg, log = self.cfg, self.log
        # tok/s and MFU count the steps timed in the window: training steps only (not evaluations,
        # checkpoint writes or skipped steps), and not a run's first step (torch.compile, warm-up)
        t_start, window_time, window_steps, bad_steps = time.time(), 0.0, 0, 0
        if not self.begin():
            return
        while self.step < self.max_iters:
            if cfg.stable_ckpt and self.step == self.stable_step:
                self.save(path=cfg.stable_ckpt, kind="stable")
                log(f"step {self.step}: end of the stable phase, written to {cfg.stable_ckpt}")
            for n in self.branch_points.get(self.step, []):
                self.save(path=branch_path(self.ckpt_path, n), kind="branch")
                log(f"step {self.step}: the decay of a {n}-step run starts here; --branch_from "
                    f"{branch_path(self.ckpt_path, n)} --max_iters {n} trains it")
            lr = lr_at(self.step, cfg, self.max_iters, self.warmup)
            for g in self.optimizer.param_groups:
                g["lr"] = lr
            t0 = time.time()
            loss, gnorm = self.train_step()
            if not (math.isfinite(loss) and math.isfinite(gnorm)):
                bad_steps = self.skip_step(loss, gnorm, bad_steps + 1)
                continue
            bad_steps = 0
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            if self.step > self.start_step:
                window_time += time.time() - t0
                window_steps += 1
            self.step += 1
            self.tokens_seen += self.step_tokens
            self.flops += self.step_tokens * self.flops_per_token
            if self.step % self.log_interval == 0 or self.step == self.max_iters:
                self.log_step(loss, lr, gnorm, window_steps, window_time, time.time() - t_start)
                window_time, window_steps = 0.0, 0
                self.log_timer.reset()
            elif self.dist.master and self.log_timer.due():  # a sign of life between the rows
                self.log_step(loss, lr, gnorm, window_steps, window_time, time.time() - t_start, row=False)
            done = self.step == self.max_iters
            if self.step % self.eval_interval == 0 or done:
                self.record_eval()
            self.stop_requested = parallel.any_rank(self.dist, self.stop_requested or self.step == cfg.stop_at,
                                                 self.device)
            if self.step % self.ckpt_interval == 0 or done or self.stop_requested or self.checkpoint_due():
                self.save(done=done)
            if self.stop_requested and not done:
                log(f"stop requested: checkpoint at step {self.step} written to {self.ckpt_path}")
                break
        self.finish()

    def train_step(self) -> tuple[float, float]:
        cfg, model = self.cfg, self.train_model
        loss_sum = torch.zeros((), device=self.device)
        for micro in range(cfg.grad_accum):
            x, y = get_batch(self.train_tokens, self.seq_len, cfg.batch_size * self.dist.world,
                             cfg.seed, self.step, micro, self.stage)
            lo = self.dist.rank * cfg.batch_size
            x, y = x[lo:lo + cfg.batch_size].to(self.device), y[lo:lo + cfg.batch_size].to(self.device)
            sync = parallel.gradient_sync(model, self.dist, self.fsdp, micro == cfg.grad_accum - 1)
            with sync, self.autocast():
                _, loss = model(x, y)
                (loss / cfg.grad_accum).backward()
            loss_sum += loss.detach()
        parallel.all_sum(self.dist, loss_sum)
        loss = loss_sum.item() / (cfg.grad_accum * self.dist.world)
        gnorm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip or float("inf"))
        gnorm = (gnorm.full_tensor() if hasattr(gnorm, "full_tensor") else gnorm).item()  # FSDP: DTensor
        return loss, gnorm

    # -- setup ----------------------------------------------------------------------------------
    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.dist, self.device = parallel.init_distributed(cfg.device)
        self.model_cfg = get_config(cfg.size)
        self.cfg = cfg = with_recipe(cfg, self.dist.world)
        self.seq_len = cfg.seq_len or self.model_cfg.block_size
        if self.seq_len > self.model_cfg.block_size:
            raise UserError(f"--seq_len {self.seq_len} exceeds the {cfg.size} context "
                            f"({self.model_cfg.block_size})")
        self.dtype, self.compile = compute_choices(cfg, self.device)
        # before anything big is read or built
        self.layout = parallel.memory_layout(cfg, self.model_cfg, self.dist, self.device, self.seq_len, self.dtype)
        self.fsdp = self.layout["strategy"] == "fsdp"
        self.train_tokens, meta = open_split(cfg.data, "train")
        self.val_tokens, _ = open_split(cfg.data, "val")
        check_data(meta, self.model_cfg, cfg.data)
        self.data_meta = meta
        for name, toks in (("train", self.train_tokens), ("val", self.val_tokens)):
            if len(toks) <= self.seq_len + 1:
                raise UserError(f"{cfg.data} {name} split has {len(toks)} tokens, fewer than one "
                                f"sequence of {self.seq_len}; prepare more data or lower --seq_len")
        self.ckpt_path = Path(cfg.ckpt or Path(cfg.out) / "ckpt.pt")
        try:
            Path(cfg.out).mkdir(parents=True, exist_ok=True)
            self.ckpt_path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create the run folder {cfg.out}: {e.strerror}; choose a writable --out") from e
        self.lock = claim_checkpoint(cfg, self.ckpt_path) if self.dist.master else None
        self.step_tokens = cfg.batch_size * cfg.grad_accum * self.dist.world * self.seq_len
        # nearest whole number of steps: the FLOPs spent stay within half a step of the budget
        self.max_iters = cfg.max_iters or max(1, round(cfg.tokens / self.step_tokens))
        self.warmup = resolve_warmup(cfg, self.max_iters, self.step_tokens)
        self.stable_step = decay_start(cfg, self.max_iters)  # wsd: --stable_ckpt is written here
        self.branch_points = branch_points(cfg, self.max_iters)
        self.flops_per_token = train_flops_per_token(self.model_cfg, self.seq_len)
        self.eval_interval = cfg.eval_interval or max(1, self.max_iters // 10)
        self.log_interval = cfg.log_interval or max(1, self.max_iters // 50)
        self.ckpt_interval = cfg.ckpt_interval or self.eval_interval
        self.log_timer, self.ckpt_timer = Every(cfg.log_every_min), Every(cfg.ckpt_every_min)
        # MFU is only printed where the peak is known
        self.peak = cfg.peak_flops or (device_peak(torch.cuda.get_device_name(self.device)) or 0
                                       if self.device.type == "cuda" else 0)
        self.stop_requested = self.interrupted = False
        self.stop_signal = 0  # the signal that asked this run to stop (SIGTERM, SIGUSR1, SIGHUP)
        self.saved_step = None  # the step of the last checkpoint this run wrote or resumed from
        self._build()

    # -- model, optimizer, state ----------------------------------------------------------------
    def _build(self):
        cfg = self.cfg
        self.meta, self.flops_base, opt_state, weights = {"lineage": []}, 0.0, None, None
        if cfg.init:
            init = checkpoint.load(cfg.init, mmap=True)  # mapped: each process reads only what it keeps
            if init["config"] != self.model_cfg:
                raise UserError(f"--init {cfg.init} is a {checkpoint.size_name(init['config'])} checkpoint "
                                f"but --size is {cfg.size}; grow it first with expand.py --size {cfg.size}")
            weights = init["model"]
            self.meta = {"lineage": init["meta"].get("lineage", []), "init": str(cfg.init),
                         "expansion": init["meta"].get("expansion")}
            self.flops_base = init["meta"].get("flops_total", 0.0)  # FLOPs of the ancestors
            opt_state = init.get("optimizer")  # expand.py --optimizer_state: grown AdamW moments
        self.sources = source_ids(self.data_meta, cfg.init)
        self.step, self.tokens_seen, self.flops, self.history = 0, 0, 0.0, []
        resume = None
        if cfg.resume:
            parallel.finish_replace(self.ckpt_path)
        if cfg.resume and self.ckpt_path.exists():  # a sharded one: its shards are read once the model is built
            path = self.ckpt_path
            resume = (checkpoint.load_sharded(path, model=False, optimizer=False) if path.is_dir()
                      else checkpoint.load(path, mmap=True))
            self._check_resumable(resume)
            weights = resume["model"]
        elif cfg.branch_from:  # a longer run's state at a step where both schedules still agree
            path = Path(cfg.branch_from)
            if not path.exists():
                raise UserError(f"--branch_from {path} does not exist; write it with --branches in a longer run")
            resume = (checkpoint.load_sharded(path, model=False, optimizer=False) if path.is_dir()
                      else checkpoint.load(path, mmap=True))
            self._check_branchable(resume, path)
            weights = resume["model"]
        self.model = parallel.build_model(self.model_cfg, self.layout, self.dist, self.device, self.dtype,
                                          cfg.seed, cfg.kernels, weights, initialise=resume is None)
        self.optimizer = torch.optim.AdamW(param_groups(self.model, cfg.weight_decay), lr=cfg.lr,
                                           betas=(cfg.beta1, cfg.beta2), fused=not self.fsdp)
        if resume is None and self.dist.master:  # a fresh start: no rows of an earlier run (killed, --overwrite)
            write_jsonl(Path(cfg.out) / "metrics.jsonl", [])
        if resume is not None:
            self._resume(resume, path)
        elif opt_state is not None:
            parallel.load_optimizer(self.model, self.optimizer, opt_state, self.fsdp)
            for g, wd in zip(self.optimizer.param_groups, (cfg.weight_decay, 0.0)):  # this stage's settings,
                g.update(betas=(cfg.beta1, cfg.beta2), weight_decay=wd)  # not the source stage's
        self.train_model = parallel.wrap(self.model, self.dist, self.device, self.fsdp, self.compile)
        # the family's stage (ancestors of this model): each stage draws its own data stream
        self.stage = len(self.meta["lineage"])

    def run_args(self) -> dict:
        """The settings a checkpoint records, for _check_resumable."""
        return {**dataclasses.asdict(self.cfg), "global_batch": self.cfg.batch_size * self.dist.world,
                "sources": self.sources}

    def _check_resumable(self, ck):
        old, now = (ck["train"] or {}).get("args", {}), self.run_args()
        changed = [k for k in RESUME_KEYS if k in old and old[k] != now[k]]
        if "sources" in old:
            changed += [k for k in SOURCE_KEYS if old["sources"][k] != now["sources"][k]]
        else:  # written before sources were recorded: the same path, however it is spelled
            changed += [k for k in SOURCE_KEYS if k in old and os.path.realpath(old[k]) != os.path.realpath(now[k])]
        if changed:
            raise UserError(f"cannot resume {self.ckpt_path}: {', '.join(f'--{k}' for k in changed)} "
                            f"changed since it was written; use the same settings or a new --out")
        if ck["config"] != self.model_cfg or not ck["train"]:
            raise UserError(f"{self.ckpt_path} is not a {self.cfg.size} training checkpoint "
                            f"({checkpoint.size_name(ck['config'])}); use a new --out or --ckpt")

    def _check_branchable(self, ck, path: Path):
        """--branch_from: the longer run trained exactly what this run would have up to its step."""
        saved = ck["train"] or {}
        old = saved.get("args", {})
        if ck["config"] != self.model_cfg or "step" not in saved:
            raise UserError(f"--branch_from {path} is not a {self.cfg.size} training checkpoint; "
                            f"write it with train.py --size {self.cfg.size} --branches")
        keys = ("size", "grad_accum", "seq_len", "seed", "global_batch", "schedule", "weight_decay",
                "beta1", "beta2", "grad_clip")
        now = self.run_args()
        changed = [f"--{k}" for k in keys if old.get(k) != now[k]]
        changed += [f"--{k}" for k in SOURCE_KEYS if old.get("sources", {}).get(k) != now["sources"][k]]
        step = saved["step"]
        if not changed:  # the LR of every step trained so far, under both plans
            theirs = TrainConfig(**{f.name: old.get(f.name, f.default) for f in dataclasses.fields(TrainConfig)})
            their_warmup = resolve_warmup(theirs, saved["max_iters"], self.step_tokens)
            if any(lr_at(t, theirs, saved["max_iters"], their_warmup) != lr_at(t, self.cfg, self.max_iters, self.warmup)
                   for t in range(step)):
                changed.append("the LR schedule (--lr, --warmup in steps, or a decay already begun)")
        if changed:
            raise UserError(f"cannot branch from {path}: {', '.join(changed)} differ from the run that wrote "
                            f"it; give the same settings (only --max_iters/--tokens may be smaller)")
        if step > self.max_iters:
            raise UserError(f"--branch_from {path} is at step {step}, past this run's {self.max_iters} steps")

    def _resume(self, ck, path: Path):
        """Continue from a checkpoint: this run's own (--resume) or a longer run's (--branch_from)."""
        saved = ck["train"]
        if path.is_dir():
            parallel.load_sharded(self.model, self.optimizer, path)
        else:
            # the weights were loaded where the model was built
            parallel.load_optimizer(self.model, self.optimizer, ck["optimizer"], self.fsdp)
        self.step, self.tokens_seen, self.flops = saved["step"], saved["tokens"], saved["flops"]
        self.saved_step = self.step if path == self.ckpt_path else None
        self.flops_base, self.history, self.meta = saved["flops_base"], saved["history"], ck["meta"]
        torch.set_rng_state(saved["rng"])
        if self.dist.master:  # drop lines logged after this checkpoint by the run that died
            write_jsonl(Path(self.cfg.out) / "metrics.jsonl", self.history)
            print(f"resumed {path} at step {self.step}/{self.max_iters}")

    def save(self, done=False, path=None, kind="train"):
        """The training checkpoint; with `path`, a stable-phase one there: kind "stable" (--stable_ckpt)
        or "branch" (--branches). Under FSDP a sharded folder (resumable on any world size;
        checkpoint.load reads it), else one file."""
        path = Path(path or self.ckpt_path)
        train = {"step": self.step, "max_iters": self.max_iters, "tokens": self.tokens_seen,
                 "flops": self.flops, "flops_base": self.flops_base, "done": done,
                 "rng": torch.get_rng_state(),
                 "history": self.history,
                 "args": self.run_args(),
                 "data_position": {"seed": self.cfg.seed, "stage": self.stage, "next_step": self.step}}
        meta = {**self.meta, "flops_total": self.flops_total,
                "metrics": str(Path(self.cfg.out) / "metrics.jsonl")}
        if kind == "stable":
            # the next member grows from here, but this member still finishes its decay: the family
            # pays for the whole stage, so its descendants count all of it among their ancestors' FLOPs
            meta.update(flops_total=self.flops_base + self.stage_flops,
                        stable_phase_end={"step": self.step, "of": self.max_iters})
        parallel.save_state(path, self.model_cfg, self.model, self.optimizer, train, meta, self.dist, self.fsdp)
        if kind == "train":
            self.saved_step = self.step
            self.ckpt_timer.reset()

    def checkpoint_due(self) -> bool:
        """--ckpt_every_min has passed on rank 0's clock: every rank learns it at the same step (an
        FSDP checkpoint is collective, and the ranks' clocks differ)."""
        if not self.ckpt_timer.minutes:
            return False
        return parallel.any_rank(self.dist, self.dist.master and self.ckpt_timer.due(), self.device)

    @property
    def stage_flops(self) -> float:
        """What this stage costs when it is complete."""
        return self.max_iters * self.step_tokens * self.flops_per_token

    @property
    def flops_total(self) -> float:
        """FLOPs of this stage and of every stage the initial checkpoint came from."""
        return self.flops_base + self.flops

    # -- around the loop ----------------------------------------------------------------------------
    def autocast(self):
        if self.dtype == torch.float32:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean loss on fixed validation windows; each rank takes its share, then all-reduce."""
        self.model.eval()
        windows = val_windows(self.val_tokens, self.seq_len, self.cfg.eval_tokens)
        # the same number of windows on every rank: an FSDP forward is a collective
        n = max(self.dist.world, len(windows) - len(windows) % self.dist.world)
        windows = windows.repeat(self.dist.world, 1)[:n][self.dist.rank::self.dist.world]
        total = torch.zeros(2, device=self.device, dtype=torch.float64)
        for xy in windows.split(self.cfg.batch_size):
            xy = xy.to(self.device)
            with self.autocast():
                _, loss = self.model(xy[:, :-1], xy[:, 1:])
            total += torch.tensor([loss.item() * xy.shape[0], xy.shape[0]], device=self.device,
                                  dtype=torch.float64)
        parallel.all_sum(self.dist, total)
        self.model.train()
        return (total[0] / total[1]).item()

    def begin(self) -> bool:
        """Checks, the stage's summary line, the signal handlers and the first evaluation; False when
        the checkpoint is already complete."""
        cfg, log = self.cfg, self.log
        if cfg.stable_ckpt and self.step > self.stable_step and not Path(cfg.stable_ckpt).exists():
            raise UserError(f"--stable_ckpt {cfg.stable_ckpt} is missing, but {self.ckpt_path} is past the "
                            f"stable phase (step {self.step} > {self.stable_step}); train the stage again "
                            f"with a new --out and --ckpt")
        if self.step == self.max_iters:
            log(f"stage {cfg.size}: {self.ckpt_path} is already complete ({self.step} steps); nothing to do")
            return False
        if self.dist.master:
            n = sum(p.numel() for p in self.model.parameters())
            log(f"stage {cfg.size}: {n:,} params, {self.max_iters} steps of {self.step_tokens:,} tokens "
                f"({self.max_iters * self.step_tokens:,} tokens, "
                f"{self.stage_flops:.3g} FLOPs), "
                f"world {self.dist.world} ({self.layout['strategy']}, activation checkpointing "
                f"{'on' if self.layout['checkpointing'] else 'off'}, planned {self.layout['bytes'] / 1e9:.2f} GB "
                f"per process), {self.device}, {str(self.dtype).split('.')[-1]}"
                + (f", from {cfg.init}" if cfg.init else ""))
        for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGHUP):  # preemption, hang-up: checkpoint, exit
            signal.signal(sig, self.on_signal)
        self.start_step = self.step
        self.model.train()
        if self.step == 0 and not self.history:
            self.record_eval()
        return True

    def skip_step(self, loss: float, gnorm: float, bad_steps: int) -> int:
        """A non-finite loss or gradient (the bad_steps-th in a row): stop, keeping the last good
        checkpoint (--on_nan stop, or 10 in a row), or skip the step."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.cfg.on_nan == "stop" or bad_steps >= 10:
            raise UserError(f"non-finite loss/gradient at step {self.step} (loss {loss}, grad norm "
                            f"{gnorm}); the last good checkpoint is {self.ckpt_path}; lower --lr "
                            f"or use --on_nan skip")
        self.log(f"step {self.step}: non-finite loss or gradient, step skipped ({bad_steps} in a row)")
        self.step += 1
        return bad_steps

    def finish(self):
        if self.step == self.max_iters and self.meta.get("expansion") and self.dist.master:
            self.check_growth()
        parallel.barrier(self.dist)
        if self.interrupted and self.step < self.max_iters:
            raise KeyboardInterrupt  # main() says how to continue; the exit status stops a launcher

    def on_signal(self, signum, _frame):
        self.stop_requested, self.stop_signal = True, signum

    def exit_status(self) -> int:
        """0 when the stage is finished; else what stops a launcher (run_family.sh, a job script) from
        taking the checkpoint for a finished stage: 128 + the signal, as shells report a signal's death
        (143 for SIGTERM, 129 for SIGHUP), or STOPPED_AT after --stop_at."""
        if self.step >= self.max_iters:
            return 0
        return 128 + self.stop_signal if self.stop_signal else STOPPED_AT

    def on_ctrl_c(self, *_):
        """SIGINT: the first Ctrl-C stops after the current step with a checkpoint, a second one at once."""
        self.stop_requested = self.interrupted = True
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def resume_hint(self) -> str:
        if self.saved_step is None:
            return "no checkpoint was written yet: running the same command again starts over"
        return (f"the last checkpoint is {self.ckpt_path} (step {self.saved_step}/{self.max_iters}); the "
                f"same command with --resume continues from it (run_family.sh passes --resume itself)")

    def check_growth(self):
        """After a grown stage every copied unit should have learned apart from its source; a copy
        that is still its twin never will (equal gradients and updates), so its width is wasted."""
        path = self.ckpt_path  # the weights only: a sharded checkpoint would read AdamW's state too
        rows = twins(checkpoint.load_sharded(path, optimizer=False) if path.is_dir()  # just written by
                     else checkpoint.load(path, mmap=True, verify=False))  # this run: no second read to verify
        stuck = [r for r in rows if r["twins"]]
        if not stuck:
            self.log(f"growth check: all {sum(r['copies'] for r in rows)} copied units differ from their source")
            return
        where = ", ".join(f"{r['dim']} block {block_label(r)}: {r['twins']}/{r['copies']}" for r in stuck)
        self.log(f"warning: copied units are still exact twins of their source after this stage ({where}); "
                 f"they add no capacity. Grow with expand.py --noise > 0 (details: python expand.py "
                 f"--inspect {self.ckpt_path})")

    # -- logging ------------------------------------------------------------------------------------
    def log(self, msg: str):
        if self.dist.master:
            print(msg, flush=True)
            with open(Path(self.cfg.out) / "train.log", "a") as f:
                f.write(msg + "\n")

    def metrics(self, row: dict):
        self.history.append(row)
        if self.dist.master:
            with open(Path(self.cfg.out) / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")

    def log_step(self, loss, lr, gnorm, timed_steps, timed_s, elapsed, row=True):
        """One log line and (row) metrics row; tok/s and MFU over the window's timed steps (none: n/a).
        The lines --log_every_min adds are not rows: metrics.jsonl stays the same for any timing."""
        tps = timed_steps * self.step_tokens / timed_s if timed_steps else None
        mfu = tps * self.flops_per_token / self.dist.world / self.peak if self.peak and tps else None
        eta = elapsed / (self.step - self.start_step) * (self.max_iters - self.step)
        speed = f"{tps / 1e3:8.1f}k tok/s" if tps else "tok/s n/a (first step of the run: compile, warm-up)"
        self.log(f"step {self.step:6d}/{self.max_iters} | loss {loss:.4f} | lr {lr:.2e} | gnorm {gnorm:.2f} | "
                 f"{speed}" + (f" | MFU {100 * mfu:.1f}%" if mfu is not None else "")
                 + f" | ETA {eta / 60:.1f} min")
        if row:
            self.metrics({"step": self.step, "tokens": self.tokens_seen, "flops": self.flops,
                          "flops_total": self.flops_total, "loss": loss, "lr": lr, "grad_norm": gnorm,
                          "tok_per_s": tps, "timed_steps": timed_steps, "mfu": mfu})

    def record_eval(self):
        val = self.evaluate()
        self.log(f"step {self.step:6d}/{self.max_iters} | val loss {val:.4f}")
        self.metrics({"step": self.step, "tokens": self.tokens_seen, "flops": self.flops,
                      "flops_total": self.flops_total, "val_loss": val})


def dry_run(cfg: TrainConfig) -> tuple[str, bool]:
    """--dry_run: a line giving the layout this command would train with (memory_layout's choice for
    its world size, micro-batch and budget), and whether it fits; no process group, data or checkpoint."""
    d = parallel.env_dist()
    device = torch.device(cfg.device) if cfg.device != "auto" else pick_device("auto")
    model_cfg = get_config(cfg.size)
    cfg = with_recipe(cfg, d.world)
    dtype, _ = compute_choices(cfg, device)
    seq_len = cfg.seq_len or model_cfg.block_size
    c = parallel.memory_layout(dataclasses.replace(cfg, memory_check=False), model_cfg, d, device, seq_len, dtype)
    return (f"layout of --size {cfg.size}: micro-batch {cfg.batch_size} x accumulation {cfg.grad_accum} x "
            f"{d.world} processes = {cfg.batch_size * cfg.grad_accum * d.world}; {c['strategy']}, activation "
            f"checkpointing {'on' if c['checkpointing'] else 'off'}; planned {c['bytes'] / parallel.GB:.1f} GB "
            f"of {c['usable_bytes'] / parallel.GB:.1f} GB usable per process ({c['gpu_mem_gb']:g} GB, {device}, "
            f"{str(dtype).split('.')[-1]})" + ("" if c["fits"] else " -- DOES NOT FIT"), c["fits"])


def claim_checkpoint(cfg: TrainConfig, path: Path):
    """Keep this run's checkpoint its own: refuse one that holds an earlier run's unless --resume or
    --overwrite, one that is the --init checkpoint, and one another train.py is writing (a lock
    file beside it, held until this process ends). Returns the open lock file."""
    if cfg.init and Path(cfg.init).resolve() == path.resolve():
        raise UserError(f"--init and --ckpt are the same file {path}; write this stage's checkpoint elsewhere")
    lock = take_lock(path.with_name(path.name + ".lock"), path)
    if path.exists() and not (cfg.resume or cfg.overwrite):
        raise UserError(f"{path} holds the checkpoint of an earlier run; continue it with --resume, replace "
                        f"it with --overwrite, or choose another --out/--ckpt")
    return lock


HELD_LOCKS = {}  # (device, inode) of a lock file -> its open file, held until the process ends


def take_lock(lock_path: Path, path: Path):
    """The lock file, locked by this process. A Trainer built again in one process (tests) takes
    the lock it holds already, found by inode: the run folder may have moved meanwhile."""
    try:
        lock = open(lock_path, "a+")
        stat = os.fstat(lock.fileno())
        held = HELD_LOCKS.get((stat.st_dev, stat.st_ino))
        if held is not None:
            lock.close()
            return held
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "?"
        lock.close()
        raise UserError(f"another train.py (PID {holder}) is writing {path}; wait for it to end or choose "
                        f"another --out/--ckpt") from None
    except OSError as e:
        raise UserError(f"cannot create {lock_path}: {e.strerror}; choose a writable --out/--ckpt") from e
    lock.truncate(0)
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    HELD_LOCKS[stat.st_dev, stat.st_ino] = lock
    return lock


def write_jsonl(path, rows):
    atomic_write(path, lambda f: f.writelines(json.dumps(r) + "\n" for r in rows), mode="w")


def main(argv=None):
    cfg = parse_args(argv)
    if cfg.dry_run:
        line, fits = dry_run(cfg)
        print(line)
        sys.exit(0 if fits or not cfg.memory_check else 1)  # 1 as run_family.sh's dry run: does not fit
    trainer, previous = None, signal.getsignal(signal.SIGINT)
    try:
        trainer = Trainer(cfg)
        signal.signal(signal.SIGINT, trainer.on_ctrl_c)
        trainer.run()
        status = trainer.exit_status()
        if status and trainer.dist.master:
            why = f"signal {signal.Signals(trainer.stop_signal).name}" if trainer.stop_signal else "--stop_at"
            print(f"stopped by {why}: the stage is not finished; {trainer.resume_hint()} (exit status "
                  f"{status})", file=sys.stderr)
    except KeyboardInterrupt:  # Ctrl-C: where the run can continue from
        if trainer is None or trainer.dist.master:
            hint = trainer.resume_hint() if trainer else "before training started; nothing was written"
            print(f"interrupted: {hint}", file=sys.stderr)
        sys.exit(130)
    finally:
        signal.signal(signal.SIGINT, previous)
        parallel.teardown()
    parallel.leave(trainer.dist, status)  # os._exit under torchrun: see parallel.leave
    if status:
        sys.exit(status)


if __name__ == "__main__":
    run_cli(main)
