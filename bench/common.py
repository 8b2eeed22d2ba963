"""
What bench/gpu.py, bench/cpu.py and bench/aot.py share: the kernels' correctness against float64
PyTorch (also used by tests/test_kernels.py), the training step and its timing, the machine a
result came from and the results files.
"""
import contextlib
import dataclasses
import math
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from flops import device_peak
from model import GPT, PRESETS
from parallel import GB
from util import UserError, atomic_write, write_json

# relative error allowed against float64: float32 rounds at 6e-8 per operation; 16-bit outputs
# round at 2^-11 (fp16) and 2^-8 (bf16), and attention casts P to 16 bits before P V
TOLERANCE = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}


# ---------------------------------------------------------------------------------------------
# Correctness: kernels against float64 PyTorch (also used by tests/test_kernels.py)

def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref||; NaN if any element of out is not finite (NaN never passes a
    `< tol` check)."""
    assert out.shape == ref.shape, (out.shape, ref.shape)
    if not torch.isfinite(out).all():
        return math.nan
    return ((out.double() - ref).norm() / ref.norm()).item()


@contextlib.contextmanager
def poisoned_outputs():
    """Every buffer the kernels write starts as NaN, so an element left unwritten cannot pass."""
    import gpt_kernels as kernels
    empty = kernels._empty
    kernels._empty = lambda shape, dtype, device: torch.full(shape, math.nan, dtype=dtype, device=device)
    try:
        yield
    finally:
        kernels._empty = empty


def _errors(fn, ref_fn, make_inputs, dy: torch.Tensor, dtype, names) -> dict[str, float]:
    """Output and input gradients of fn in `dtype` against ref_fn in float64, as relative errors.
    make_inputs(dtype) -> the leaf tensors, drawn once and converted (the same values for both)."""
    results = []
    for f, dt in ((fn, dtype), (ref_fn, torch.float64)):
        leaves = make_inputs(dt)
        out = f(*leaves)
        out.backward(dy.to(dt))
        assert out.dtype == dt and all(t.grad.dtype == dt for t in leaves)
        results.append([out] + [t.grad for t in leaves])
    return {name: rel_err(o, r) for name, o, r in zip(names, *results)}


def layer_norm_errors(shape, dtype, device="cpu") -> dict[str, float]:
    """kernels.layer_norm vs F.layer_norm in float64 on fresh random inputs: y, dx, dw, db."""
    import gpt_kernels as kernels
    N = shape[-1]
    x = torch.randn(shape, device=device) * 3 + 1.5  # off-centre and scaled: mean and variance matter
    w, b = torch.randn(N, device=device), torch.randn(N, device=device)
    return _errors(lambda x, w, b: kernels.layer_norm(x, w, b, 1e-5),
                   lambda x, w, b: F.layer_norm(x, (N,), w, b, 1e-5),
                   lambda dt: [t.detach().to(dt).requires_grad_() for t in (x, w, b)],
                   torch.randn(shape, device=device), dtype, ["y", "dx", "dw", "db"])


def rms_norm_errors(shape, dtype, device="cpu") -> dict[str, float]:
    """kernels.rms_norm vs F.rms_norm in float64 on fresh random inputs: y, dx, dw."""
    import gpt_kernels as kernels
    N = shape[-1]
    x, w = torch.randn(shape, device=device) * 3 + 1.5, torch.randn(N, device=device)
    return _errors(lambda x, w: kernels.rms_norm(x, w, 1e-5), lambda x, w: F.rms_norm(x, (N,), w, 1e-5),
                   lambda dt: [t.detach().to(dt).requires_grad_() for t in (x, w)],
                   torch.randn(shape, device=device), dtype, ["y", "dx", "dw"])


def causal_sdpa(q, k, v):
    """PyTorch's causal attention, as model.py calls it off the Triton path."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def sdpa_with(backend):
    """causal_sdpa pinned to one SDPA backend (torch.nn.attention.SDPBackend)."""
    from torch.nn.attention import sdpa_kernel

    def run(q, k, v):
        with sdpa_kernel(backend):
            return causal_sdpa(q, k, v)
    return run


def attention_errors(B, H, T, D, dtype, device="cpu", layout="qkv") -> dict[str, float]:
    """kernels.causal_attention vs causal SDPA in float64: o, dq, dk, dv. layout "qkv": q, k, v are
    views of one (B, T, 3, H, D) buffer as model.py makes them; "separate": contiguous tensors."""
    import gpt_kernels as kernels
    if layout == "qkv":
        buf = torch.randn(B, T, 3, H, D, device=device)
        make = lambda dt: [t.requires_grad_() for t in buf.to(dt).permute(2, 0, 3, 1, 4).unbind(0)]  # noqa: E731
    else:
        qkv = [torch.randn(B, H, T, D, device=device) for _ in range(3)]
        make = lambda dt: [t.detach().to(dt).requires_grad_() for t in qkv]  # noqa: E731
    return _errors(kernels.causal_attention, causal_sdpa, make, torch.randn(B, H, T, D, device=device), dtype,
                   ["o", "dq", "dk", "dv"])


# ---------------------------------------------------------------------------------------------
# Training step (GPU and CPU)

@dataclasses.dataclass(frozen=True)
class StepMode:
    """How a training step runs. Written as a spec like "compile+bf16+fused+t1"."""
    compile: bool = False  # torch.compile the model
    bf16: bool = False  # bfloat16 autocast (float32 weights and optimizer)
    fused: bool = False  # AdamW(fused=True): one kernel for the whole update
    threads: int = 0  # intra-op threads (torch.set_num_threads); 0: torch's default
    kernels: bool = False  # the Triton kernels (CUDA only)

    @classmethod
    def as_train_py(cls, device: torch.device) -> "StepMode":
        """What train.py does on this device with its defaults (one process: fused AdamW)."""
        from train import TrainConfig, compute_choices
        dtype, compile = compute_choices(TrainConfig(), device)
        return cls(compile=compile, bf16=dtype == torch.bfloat16, fused=True, kernels=device.type == "cuda")

    @classmethod
    def parse(cls, spec: str, device: torch.device = torch.device("cpu")) -> "StepMode":
        """Parts joined by +; "train" starts from train.py's own choices (as_train_py)."""
        kw = {}
        for part in spec.split("+"):
            if part == "train":
                kw |= dataclasses.asdict(cls.as_train_py(device))
            elif part in ("compile", "bf16", "fused", "kernels"):
                kw[part] = True
            elif part[:1] == "t" and part[1:].isdigit():
                kw["threads"] = int(part[1:])
            elif part not in ("eager", "fp32", "plain"):
                raise UserError(f"unknown step mode part {part!r} in {spec!r}; use parts train, "
                                "eager/compile, fp32/bf16, fused, kernels, t<threads> joined by +")
        return cls(**kw)


class TrainStep:
    """One model, its AdamW and one way of running forward, backward, clip and update."""

    def __init__(self, model: GPT, mode: StepMode, device: torch.device):
        self.model, self.mode, self.device = model, mode, device
        model.set_kernels(mode.kernels)
        self.forward = torch.compile(model) if mode.compile else model
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, fused=mode.fused)
        # set before every step: modes run interleaved, and the thread count is process-wide
        self.threads = mode.threads or torch.get_num_threads()

    def __call__(self, x, y) -> dict[str, float]:
        """-> loss; seconds (wall); cpu_seconds (this process, all threads); others_load (cores
        that other processes kept busy meanwhile)."""
        torch.set_num_threads(self.threads)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        ticks, cpu0, t0 = _cpu_ticks(), time.process_time(), time.perf_counter()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.mode.bf16):
            _, loss = self.forward(x, y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        loss = loss.item()  # waits for the device
        seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - cpu0
        busy, ours = (b - a for a, b in zip(ticks, _cpu_ticks()))
        return {"loss": loss, "seconds": seconds, "cpu_seconds": cpu_seconds,
                "others_load": (busy - ours) / os.sysconf("SC_CLK_TCK") / seconds}


def _cpu_ticks() -> tuple[int, int]:
    """(busy CPU ticks of the whole machine, ticks of this process), from /proc (Linux)."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:]]
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0, 0
    return sum(ticks) - ticks[3] - ticks[4], int(fields[11]) + int(fields[12])  # - idle, iowait; utime + stime


CLEAN_LOAD = 0.25  # a step is "clean" if other processes used less than this many cores meanwhile


def time_steps(steps: dict[str, TrainStep], batches, warmup: int) -> dict[str, dict]:
    """Run every mode on every batch, interleaved, so that they share the machine's load; the first
    `warmup` steps (compilation, allocator, autotuning) are not timed. -> per mode: the losses, and
    per timed step seconds, cpu_seconds and others_load (TrainStep); their medians, and the median
    seconds of the clean steps (None if fewer than 3: the machine was busy throughout)."""
    res = {name: {"losses": [], "seconds": [], "cpu_seconds": [], "others_load": []} for name in steps}
    for i, (x, y) in enumerate(batches):
        for name, step in steps.items():
            timing = step(x, y)
            res[name]["losses"].append(timing.pop("loss"))
            for key, value in timing.items():
                if i >= warmup:
                    res[name][key].append(value)
    for r in res.values():
        r["median_s"] = statistics.median(r["seconds"])
        r["median_cpu_s"] = statistics.median(r["cpu_seconds"])
        clean = [s for s, load in zip(r["seconds"], r["others_load"]) if load < CLEAN_LOAD]
        r["clean_median_s"] = statistics.median(clean) if len(clean) >= 3 else None
    return res


def random_batches(n: int, batch: int, T: int, vocab: int, device) -> list:
    return [tuple(torch.randint(vocab, (batch, T), device=device) for _ in range(2)) for _ in range(n)]


# ---------------------------------------------------------------------------------------------
# The machine and the results files

def machine() -> dict:
    m = {"torch": torch.__version__, "python": platform.python_version(), "cpu": _cpu_model(),
         "cpu_count": os.cpu_count(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}
    try:
        import triton
        m["triton"] = triton.__version__
    except ImportError:
        m["triton"] = None
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        m.update(gpu=torch.cuda.get_device_name(), sms=p.multi_processor_count, cuda=torch.version.cuda,
                 gpu_memory_gb=p.total_memory / GB, peak_bf16_flops=device_peak(torch.cuda.get_device_name()))
    return m


def _cpu_model() -> str:
    """Model name and the vector extensions that matter for float32/bf16 speed, from /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo") as f:  # the fields of the last core listed
            info = {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in f if ":" in line)}
    except OSError:
        return platform.processor() or "unknown"
    features = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in info.get("flags", "").split()]
    return f"{info.get('model name', '?')} (family {info.get('cpu family', '?')}, model {info.get('model', '?')}; " \
           f"{' '.join(features)})"


def save_results(out_dir: str, name: str, res: dict, md) -> None:
    write_json(f"{out_dir}/{name}.json", res)
    atomic_write(f"{out_dir}/{name}.md", lambda f: f.write(md(res)), mode="w")


def check_run(steps: int, warmup: int, sizes: list[str]) -> None:
    """The training-step benchmarks' usage errors, before any work."""
    if steps < 1 or warmup < 0:
        raise UserError("--steps must be >= 1 and --warmup >= 0")
    for size in sizes:
        if size not in PRESETS:
            raise UserError(f"unknown size {size!r}; choose from {', '.join(PRESETS)}")
