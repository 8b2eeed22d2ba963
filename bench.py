"""
Benchmarks of the Triton kernels (gpt_kernels.py) against PyTorch's own ops, and of the training step.

On a CUDA GPU, one prepared run, the sections that matter first (most of the time is Triton
autotuning and torch.compile; no section or model mode starts after --budget_s seconds, 8 minutes
by default, so that a 10-minute slot keeps what ran; results are saved after every section):

    python bench.py --gpu_all --out bench/

  1. correctness first: the compiled kernels, float32 and bfloat16, forward and backward, against
     float64 PyTorch on fresh random inputs, every output buffer poisoned with NaN beforehand (the
     same comparison tests/test_kernels.py runs on CPU through Triton's interpreter);
  2. a training step of the 1b preset (8 x 1024 tokens, bf16 autocast, fused AdamW) with kernels
     off and on, compiled first, then eager, from one initialisation on the same batches: tokens/s,
     MFU against the device's bf16 peak (flops.device_peak), peak memory allocated, and each step's
     loss (on and off should agree to bf16 noise);
  3. LayerNorm fwd+bwd at widths 2048 and 4096 (8 x 1024 rows, bf16): kernel vs F.layer_norm eager
     and torch.compile'd, in GB/s of the minimum traffic, against a measured device copy;
  4. causal attention fwd+bwd (8 x 1024 tokens, 16 and 32 heads of 128, bf16): kernel vs
     F.scaled_dot_product_attention (flash backend) eager and compiled, in TFLOP/s.
  Every section also records torch.cuda.max_memory_allocated.

On CPU, the training step of each tiny member (model.FAMILIES["tiny"], flops.FAMILY_BATCH tokens):

    python bench.py --cpu --out bench/

  a plain eager float32 step against the step as train.py runs it (mode `train`) and other
  configurations (--cpu_modes), interleaved step by step so that every mode sees the same load from
  whatever else runs on the machine; median step time, CPU time per step, how busy other processes
  kept the machine meanwhile, and a profile of where train.py's step spends its time; then the
  largest op of that profile, causal attention, alone: SDPA's CPU flash kernel against its math
  backend and an explicit softmax, eager and compiled (same outputs and gradients, checked).

Without a GPU, the GPU machine code (about 3 minutes on 2 cores):

    python bench.py --aot --out bench/

  compiles every kernel launch (each autotuning candidate, float32/bfloat16/float16, paper and tiny
  shapes) for sm_90 (H100/H200) and sm_80 (A100) with Triton's compiler, and reads registers,
  spills, shared memory and tensor-core use from the machine code.

Results go to OUT/results_{gpu,cpu,aot}.json and a short OUT/results_{gpu,cpu,aot}.md.
"""
import argparse
import contextlib
import dataclasses
import math
import os
import platform
import statistics
import time
import traceback

from util import ArgumentParser, UserError, atomic_write, check_args, md_table, run_cli, write_json  # first: see util.py


def parse_args(argv=None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--gpu_all", action="store_true", help="correctness, kernel and 1b benchmarks on CUDA")
    what.add_argument("--cpu", action="store_true", help="training step of each tiny member on CPU")
    what.add_argument("--aot", action="store_true",
                      help="compile every kernel launch for GPU architectures (--sm) and check registers, "
                           "spills, shared memory and tensor-core use; needs no GPU")
    p.add_argument("--out", default="bench", help="folder for results_{gpu,cpu,aot}.{json,md}")
    p.add_argument("--steps", type=int, default=10, help="timed training steps per mode")
    p.add_argument("--warmup", type=int, default=3, help="untimed training steps per mode first (compilation)")
    p.add_argument("--cpu_modes", default="plain,train,compile+fused,compile+bf16+fused,t1,train+t1",
                   help="comma-separated step modes, the first the baseline; a mode joins parts with +: "
                        "train (what train.py chooses on this device), eager|compile, fp32|bf16, fused "
                        "(AdamW), t<N> (threads), e.g. compile+bf16+t1; plain = eager fp32, AdamW's "
                        "default (foreach) update, torch's default threads")
    p.add_argument("--sizes", default="", help="CPU: comma-separated members (default: the tiny family)")
    p.add_argument("--size", default="1b", help="GPU: model preset of the training-step benchmark")
    p.add_argument("--batch", type=int, default=8, help="GPU: sequences per training step")
    p.add_argument("--model_compile", action=argparse.BooleanOptionalAction, default=True,
                   help="GPU: also time the torch.compile'd model (about a minute of compilation each)")
    p.add_argument("--budget_s", type=float, default=480,
                   help="GPU: start no new section or model mode after this many seconds (default 480: "
                        "correctness and the 1b step come first)")
    p.add_argument("--sm", default="90,80", help="--aot: comma-separated compute capabilities (90: H100/H200, 80: A100)")
    p.add_argument("--quick", action="store_true", help="--aot: LayerNorm 4096 and head_dim 128 only (bf16; attention also float32)")
    return p.parse_args(argv)


check_args(__name__, parse_args)  # --help and usage errors before torch loads
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from flops import FAMILY_BATCH, device_peak, train_flops_per_token  # noqa: E402
from parallel import GB  # noqa: E402
from model import FAMILIES, GPT, PRESETS, get_config  # noqa: E402

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


def gpu_correctness(device="cuda", ln_shapes=((4, 1000, 2048), (3, 77, 3328), (5, 33, 1000)),
                    attn_shapes=((2, 16, 1024, 128), (1, 3, 777, 128), (2, 4, 300, 64)),
                    float32_attn_shapes=((1, 2, 100, 16),)) -> list[dict]:
    """Section 1: widths and lengths that are not powers of two or tile multiples, paper shapes;
    the tiny family's head_dim in float32 only (each new (head_dim, dtype) autotunes, a dozen
    compilations)."""
    cases = []
    for dtype in (torch.float32, torch.bfloat16):
        for shape in ln_shapes:
            cases.append(("layer_norm", shape, dtype, lambda s=shape, d=dtype: layer_norm_errors(s, d, device)))
        for shape in attn_shapes + (float32_attn_shapes if dtype == torch.float32 else ()):
            cases.append(("attention", shape, dtype, lambda s=shape, d=dtype: attention_errors(*s, d, device)))
    rows = []
    with poisoned_outputs():
        for kernel, shape, dtype, run in cases:
            errs = run()
            worst = max(math.inf if math.isnan(e) else e for e in errs.values())  # NaN: not finite
            rows.append({"kernel": kernel, "shape": list(shape), "dtype": str(dtype).split(".")[1],
                         "max_rel_err": worst, "errors": errs, "tol": TOLERANCE[dtype], "ok": worst < TOLERANCE[dtype]})
            ok = rows[-1]["ok"]
            print(f"  {kernel:10s} {str(shape):22s} {rows[-1]['dtype']:8s} max rel err "
                  f"{rows[-1]['max_rel_err']:.2e} (tol {TOLERANCE[dtype]:.0e}) {'ok' if ok else 'FAIL'}", flush=True)
    return rows


# ---------------------------------------------------------------------------------------------
# Kernel speed on GPU

def _fwd_bwd_ms(fn, inputs: list[torch.Tensor], dy: torch.Tensor) -> float:
    """Median milliseconds of one forward and backward (gradients returned, not accumulated)."""
    from triton.testing import do_bench

    def run():
        torch.autograd.grad(fn(*inputs), inputs, dy)
    run()  # compile, autotune
    return do_bench(run, warmup=25, rep=200, return_mode="median")


def _copy_gbps(device) -> float:
    """Device memory bandwidth as a plain copy sees it (bytes read + written), the ceiling for LN."""
    from triton.testing import do_bench
    a = torch.empty(1 << 30, dtype=torch.uint8, device=device).random_()
    b = torch.empty_like(a)
    ms = do_bench(lambda: b.copy_(a), warmup=25, rep=200, return_mode="median")
    return 2 * a.numel() / ms / 1e6


def gpu_layer_norm_speed(rows: int = 8 * 1024, widths=(2048, 4096), device="cuda") -> list[dict]:
    """Section 2: GB/s = the least traffic of fwd+bwd (read x, write y; read x and dy, write dx)
    over the time, so every implementation is measured against the same work."""
    import gpt_kernels as kernels
    out, peak = [], _copy_gbps(device)
    print(f"  device copy: {peak:.0f} GB/s", flush=True)
    for N in widths:
        x = torch.randn(rows, N, device=device, dtype=torch.bfloat16, requires_grad=True)
        w, b = (torch.randn(N, device=device, dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
        def torch_ln(x, w, b):
            return F.layer_norm(x, (N,), w, b, 1e-5)
        impls = {"triton": lambda x, w, b: kernels.layer_norm(x, w, b, 1e-5), "eager": torch_ln,
                 "compiled": torch.compile(torch_ln, dynamic=False)}
        ms = {name: _fwd_bwd_ms(fn, [x, w, b], torch.randn_like(x)) for name, fn in impls.items()}
        gbytes = 5 * rows * N * x.element_size() / 1e9
        row = {"rows": rows, "width": N, "ms": ms, "GB/s": {k: gbytes / (v / 1e3) for k, v in ms.items()},
               "copy_GB/s": peak}
        row["vs_eager"], row["vs_compiled"] = ms["eager"] / ms["triton"], ms["compiled"] / ms["triton"]
        row["of_copy_bandwidth"] = row["GB/s"]["triton"] / peak
        out.append(row)
        print(f"  LN {rows}x{N}: triton {row['GB/s']['triton']:.0f} GB/s ({row['of_copy_bandwidth']:.0%} of copy), "
              f"eager {row['GB/s']['eager']:.0f}, compiled {row['GB/s']['compiled']:.0f}; "
              f"x{row['vs_eager']:.2f} vs eager, x{row['vs_compiled']:.2f} vs compiled", flush=True)
    return out


def gpu_attention_speed(batch: int = 8, T: int = 1024, D: int = 128, widths=(2048, 4096), device="cuda") -> list[dict]:
    """Section 3. FLOPs count the causal half: forward 2 matmuls of B H T^2 D / 2 multiply-adds,
    backward 5 (S recomputed, dV, dP, dQ, dK), so fwd+bwd = 3.5 x 2 B H T^2 D (FlashAttention-2's
    convention). Inputs are views of one qkv buffer, as the model makes them."""
    import gpt_kernels as kernels
    from torch.nn.attention import SDPBackend

    # eager: insist on the flash backend (compiled: inductor's choice)
    impls = {"triton": kernels.causal_attention, "eager": sdpa_with(SDPBackend.FLASH_ATTENTION),
             "compiled": torch.compile(causal_sdpa, dynamic=False)}
    out = []
    for width in widths:
        H = width // D
        qkv = torch.randn(batch, T, 3, H, D, device=device, dtype=torch.bfloat16)
        inputs = [t.requires_grad_() for t in qkv.permute(2, 0, 3, 1, 4).unbind(0)]
        # dO laid out as the model's y.transpose(1, 2).reshape(B, T, C) hands it back
        do = torch.randn(batch, T, H, D, device=device, dtype=torch.bfloat16).transpose(1, 2)
        ms = {name: _fwd_bwd_ms(fn, inputs, do) for name, fn in impls.items()}
        tflop = 3.5 * 2 * batch * H * T * T * D / 1e12
        row = {"batch": batch, "heads": H, "T": T, "head_dim": D, "ms": ms,
               "TFLOP/s": {k: tflop / (v / 1e3) for k, v in ms.items()},
               "vs_sdpa_flash": ms["eager"] / ms["triton"], "vs_compiled": ms["compiled"] / ms["triton"],
               "tuned": {name: str(getattr(k, "best_config", None)) for name, k in [
                   ("fwd", kernels._attn_fwd_tuned), ("dkdv", kernels._attn_bwd_dkdv_tuned),
                   ("dq", kernels._attn_bwd_dq_tuned)]}}
        out.append(row)
        print(f"  attention B{batch} H{H} T{T} D{D}: triton {row['TFLOP/s']['triton']:.0f} TFLOP/s, "
              f"SDPA flash {row['TFLOP/s']['eager']:.0f}, compiled {row['TFLOP/s']['compiled']:.0f}; "
              f"x{row['vs_sdpa_flash']:.2f} vs flash; tuned {row['tuned']}", flush=True)
    return out


# ---------------------------------------------------------------------------------------------
# GPU machine code without a GPU. Triton's compiler and the ptxas it ships run on any machine:
# compile every launch the kernels make (each autotuning candidate, each dtype, paper and tiny
# shapes) for a GPU architecture and read, from the cubin, what the interpreter cannot show:
# whether the compiler accepts the code, the registers and the spills to local memory, the shared
# memory a block needs (against the architecture's limit) and whether the dots use tensor cores.

# largest shared memory one block may use, bytes (CUDA programming guide, compute capabilities)
SHARED_LIMIT = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}
AOT_SMS = 132  # streaming multiprocessors assumed for the LayerNorm backward's row groups (H100 SXM)


@dataclasses.dataclass(frozen=True)
class AotCase:
    """One call of kernels.layer_norm_* or kernels.attention_*: width N, or head_dim D at length T."""
    op: str  # "layer_norm" or "attention"
    dtype: torch.dtype
    N: int = 0
    D: int = 0
    T: int = 1024

    def __str__(self):
        shape = f"N={self.N}" if self.op == "layer_norm" else f"D={self.D} T={self.T}"
        return f"{self.op} {shape} {str(self.dtype).split('.')[1]}"


def aot_cases(quick: bool) -> list[AotCase]:
    """LayerNorm at the paper widths and the tiny family's widest (float32 under autocast, bfloat16
    under FSDP's bf16 params); attention at head_dim 128 (paper), 64 and 16 (tiny family), plus a
    length that is not a multiple of 16 (a separate specialisation). quick: the paper's widest
    LayerNorm and its attention in bfloat16, and attention in float32 (its own tiles)."""
    bf16 = torch.bfloat16
    if quick:
        return [AotCase("layer_norm", bf16, N=4096), AotCase("attention", bf16, D=128),
                AotCase("attention", torch.float32, D=128)]
    cases = [AotCase("layer_norm", dt, N=n) for dt in (torch.float32, bf16) for n in (64, 2048, 2560, 3328, 4096)]
    cases += [AotCase("attention", dt, D=d) for dt in (bf16, torch.float16, torch.float32) for d in (128, 64, 16)]
    return cases + [AotCase("attention", bf16, D=128, T=1000)]


@contextlib.contextmanager
def _recorded_launches():
    """Inside: kernels' launches append (kernel, args, kwargs) to the yielded list instead of
    running; what the launchers compute around them (strides, grids, options) runs as usual."""
    import gpt_kernels as kernels
    names = ["_ln_fwd", "_ln_bwd", "_attn_fwd_tuned", "_attn_bwd_delta", "_attn_bwd_dkdv_tuned", "_attn_bwd_dq_tuned"]
    saved = {name: getattr(kernels, name) for name in names} | {"_ln_bwd_programs": kernels._ln_bwd_programs}
    launches = []

    class Recorder:
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            return lambda *args, **kwargs: launches.append((self.kernel, args, kwargs))
    try:
        for name in names:
            setattr(kernels, name, Recorder(saved[name]))
        kernels._ln_bwd_programs = lambda M, device: min(M, 4 * AOT_SMS)
        yield launches
    finally:
        for name, value in saved.items():
            setattr(kernels, name, value)


def _case_launches(case: AotCase) -> list:
    """The launches of one forward and backward, made with CPU tensors of the case's shape (the
    kernels never run, so nothing is computed; the buffers are small and never written)."""
    import gpt_kernels as kernels
    with _recorded_launches() as launches:
        if case.op == "layer_norm":
            x, w = torch.empty(64, case.N, dtype=case.dtype), torch.empty(case.N, dtype=case.dtype)
            _, mean, rstd = kernels.layer_norm_fwd(x, w, w, 1e-5)
            kernels.layer_norm_bwd(x, x, w, mean, rstd)
        else:  # q, k, v as views of one (B, T, 3, H, D) buffer, as model.py makes them
            q, k, v = torch.empty(1, case.T, 3, 2, case.D, dtype=case.dtype).permute(2, 0, 3, 1, 4)
            o, lse = kernels.attention_fwd(q, k, v)
            kernels.attention_bwd(o, q, k, v, o, lse)
    return launches


def _variants(kernel, args, kwargs):
    """-> (jit function, [kwargs]): one per autotuning candidate left after the kernel's pruning."""
    from triton.runtime.autotuner import Autotuner
    if not isinstance(kernel, Autotuner):
        return kernel, [kwargs]
    configs = kernel.configs
    if kernel.early_config_prune:
        configs = kernel.early_config_prune(configs, dict(zip(kernel.fn.arg_names, args)))
    return kernel.fn, [kwargs | c.all_kwargs() for c in configs]


def compile_for(fn, args, kwargs, capability: int):
    """Compile jit function `fn` as a launch with these arguments would, but for the CUDA
    architecture sm_<capability>. Uses Triton's own argument specialisation (pointer alignment,
    integers divisible by 16), internals of the pinned triton==3.7.1."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature
    target = GPUTarget("cuda", capability, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization, options)
    return triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target, options=options.__dict__)


def _resource_usage(cubin: bytes) -> dict[str, int]:
    """Registers per thread and stack bytes per thread (spills) of a cubin, by the cuobjdump that
    ships with triton."""
    import re
    import subprocess
    import tempfile
    import triton
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+)", out)
    if not m:
        raise RuntimeError(f"unexpected cuobjdump output: {out[:300]}")
    return {"registers": int(m[1]), "spill_bytes": int(m[2])}


def _tensor_cores(ptx: str) -> str:
    """Which matrix instructions the dots became: Hopper's wgmma, Ampere's mma, or none (FMA)."""
    return "wgmma" if "wgmma.mma_async" in ptx else "mma" if "mma.sync" in ptx else "none"


def aot_compile(cases: list[AotCase], capabilities: list[int]) -> list[dict]:
    """A row per (case, architecture, kernel, candidate): resources, fits, tensor cores, or error."""
    import gpt_kernels as kernels
    if kernels._INTERPRETED:
        raise UserError("--aot compiles for a GPU, which Triton's interpreter cannot: unset TRITON_INTERPRET")
    rows = []
    for case in cases:
        for kernel, args, kwargs in _case_launches(case):
            fn, variants = _variants(kernel, args, kwargs)
            for capability in capabilities:
                for kw in variants:
                    tiles = {k: v for k, v in kw.items() if k.startswith("BLOCK")}
                    row = {"case": str(case), "sm": capability, "kernel": fn.__name__, "tiles": tiles,
                           "num_warps": kw.get("num_warps", 4), "num_stages": kw.get("num_stages", 3)}
                    try:
                        compiled = compile_for(fn, args, kw, capability)
                    except Exception as e:  # the compiler rejected the code: the finding to report
                        row["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[-1][:300]}"
                    else:
                        row.update(_resource_usage(compiled.asm["cubin"]), shared_bytes=compiled.metadata.shared,
                                   tensor_cores=_tensor_cores(compiled.asm["ptx"]))
                        row["fits"] = row["shared_bytes"] <= SHARED_LIMIT[capability]
                    rows.append(row)
                    print(f"  sm_{capability} {str(case):32s} {_aot_line(row)}", flush=True)
    return rows


def _aot_line(row: dict) -> str:
    what = f"{row['kernel']} {row['tiles']} w{row['num_warps']} s{row['num_stages']}"
    if "error" in row:
        return f"{what}: ERROR {row['error']}"
    return (f"{what}: {row['registers']} regs, {row['spill_bytes']} B spilled, {row['shared_bytes'] / 1024:.0f} KiB "
            f"shared{'' if row['fits'] else ' (too much)'}, tensor cores {row['tensor_cores']}")


def aot_problems(rows: list[dict]) -> list[str]:
    """What would go wrong on a GPU: a compile error; a launch (case, architecture, kernel) with no
    candidate that fits and does not spill; 16-bit attention dots off the tensor cores."""
    problems = [f"sm_{r['sm']} {r['case']} {r['kernel']} {r['tiles']}: {r['error']}" for r in rows if "error" in r]
    groups = {}
    for r in rows:
        groups.setdefault((r["sm"], r["case"], r["kernel"]), []).append(r)
    for (sm, case, kernel), group in groups.items():
        if not any(r.get("fits") and r["spill_bytes"] == 0 for r in group):
            problems.append(f"sm_{sm} {case} {kernel}: no candidate fits in shared memory without spilling")
        if "attention" in case and "float32" not in case and kernel != "_attn_bwd_delta" and any(
                r.get("tensor_cores") == "none" for r in group):
            problems.append(f"sm_{sm} {case} {kernel}: a 16-bit candidate does not use tensor cores")
    return problems


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


def _random_batches(n: int, batch: int, T: int, vocab: int, device) -> list:
    return [tuple(torch.randint(vocab, (batch, T), device=device) for _ in range(2)) for _ in range(n)]


def gpu_model_speed(size: str, batch: int, steps: int, warmup: int, compiled: bool, deadline: float,
                    device="cuda") -> dict:
    """Section 4: the same initial weights and batches for every mode; one mode in memory at a time;
    no new mode starts after `deadline` (time.perf_counter)."""
    cfg, device = get_config(size), torch.device(device)
    torch.manual_seed(0)
    with device:  # initialise on the GPU: a billion normal draws on the host take a while
        model = GPT(cfg, use_kernels=False)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    batches = _random_batches(warmup + steps, batch, cfg.block_size, cfg.vocab_size, device)
    tokens = batch * cfg.block_size
    peak = device_peak(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    # compiled first: it is what train.py runs on CUDA, and the budget may end before the rest
    specs = ((["compile+bf16+fused", "compile+bf16+fused+kernels"] if compiled else [])
             + ["bf16+fused", "bf16+fused+kernels"])
    out = {"size": size, "batch": batch, "seq_len": cfg.block_size, "peak_flops": peak, "modes": {},
           "skipped": []}
    for spec in specs:
        if time.perf_counter() > deadline:
            out["skipped"].append(spec)
            continue
        model.load_state_dict(init)
        reset_peak_memory(device)
        step = TrainStep(model, StepMode.parse(spec, device), device)
        r = time_steps({spec: step}, batches, warmup)[spec]
        r["max_memory_allocated_gb"] = max_memory_gb(device)
        del step
        torch._dynamo.reset()
        torch.cuda.empty_cache()
        r["tokens_per_s"] = tokens / r["median_s"]
        r["mfu"] = r["tokens_per_s"] * train_flops_per_token(cfg) / peak if peak else None
        # bf16 training from one init on the same batches: kernels on and off should stay close
        first = next(iter(out["modes"].values()), r)
        r["max_loss_diff_vs_first_mode"] = max(abs(a - b) for a, b in zip(first["losses"], r["losses"]))
        out["modes"][spec] = r
        mfu = f"{r['mfu']:.1%}" if peak else "n/a"
        print(f"  {size} {spec:28s} {r['tokens_per_s']:10.0f} tok/s  MFU {mfu}  losses "
              f"{', '.join(f'{x:.4f}' for x in r['losses'][:4])}", flush=True)
    return out


def reset_peak_memory(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def max_memory_gb(device) -> float | None:
    """torch.cuda.max_memory_allocated since the last reset_peak_memory, in GB (None off CUDA)."""
    return torch.cuda.max_memory_allocated(device) / GB if torch.device(device).type == "cuda" else None


def op_shares(step: TrainStep, batches, top: int = 6) -> dict[str, float]:
    """Where a training step's time goes: each op's share of the self time of all ops (torch
    profiler; self time is the calling thread's, so intra-op threads count once), the largest first."""
    from torch.profiler import profile
    with profile() as prof:
        for x, y in batches:
            step(x, y)
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    events.sort(key=lambda e: -e.self_cpu_time_total)
    return {e.key: e.self_cpu_time_total / total for e in events[:top]}


def cpu_family_speed(sizes: list[str], modes: list[str], steps: int, warmup: int) -> list[dict]:
    """Every member, modes[0] the baseline, all modes interleaved from one initialisation."""
    device, batch = torch.device("cpu"), FAMILY_BATCH["tiny"]
    default_threads = torch.get_num_threads()
    out = []
    for size in sizes:
        cfg = get_config(size)
        torch.manual_seed(0)
        base = GPT(cfg, use_kernels=False)
        trainers = {}
        for spec in modes:
            model = GPT(cfg, use_kernels=False)
            model.load_state_dict(base.state_dict())
            trainers[spec] = TrainStep(model, StepMode.parse(spec), device)
        batches = _random_batches(warmup + steps, batch, cfg.block_size, cfg.vocab_size, device)
        res = time_steps(trainers, batches, warmup)
        profiled = "train" if "train" in trainers else modes[0]
        row = {"size": size, "batch": batch, "seq_len": cfg.block_size, "modes": res,
               "profiled_mode": profiled, "profile": op_shares(trainers[profiled], batches[:3])}
        torch.set_num_threads(default_threads)
        tokens = batch * cfg.block_size
        base_r = res[modes[0]]
        for r in res.values():
            r["tokens_per_s"] = tokens / r["median_s"]
            r["speedup"] = base_r["median_s"] / r["median_s"]
            clean = base_r["clean_median_s"] and r["clean_median_s"]
            r["clean_speedup"] = base_r["clean_median_s"] / r["clean_median_s"] if clean else None
        out.append(row)
        print(f"  {size:5s} " + "  ".join(
            f"{spec}: {r['tokens_per_s']:7.0f} tok/s x{r['speedup']:.2f}" for spec, r in res.items()), flush=True)
        torch._dynamo.reset()
    return out


def explicit_attention(q, k, v):
    """softmax(Q K^T / sqrt(d) + causal mask) V, written out: the T x T matrix is materialised."""
    T = q.shape[-2]
    s = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    s = s.masked_fill(torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    return torch.softmax(s, dim=-1) @ v


def cpu_attention_speed(sizes: list[str], reps: int) -> list[dict]:
    """Causal attention at each tiny member's shape (float32), forward + backward on this CPU:
    SDPA as the model calls it (its CPU flash kernel), SDPA's math backend, and the explicit
    softmax eager and compiled: would another formulation of the largest op of a step pay here?"""
    from torch.nn.attention import SDPBackend

    impls = {"sdpa": causal_sdpa, "sdpa_math": sdpa_with(SDPBackend.MATH), "explicit": explicit_attention,
             "explicit_compiled": torch.compile(explicit_attention, dynamic=False)}
    out = []
    for size in sizes:
        cfg, batch = get_config(size), FAMILY_BATCH["tiny"]
        torch.manual_seed(0)
        inputs = [torch.randn(batch, cfg.n_head, cfg.block_size, cfg.head_dim, requires_grad=True) for _ in range(3)]
        dy = torch.randn_like(inputs[0])
        ms, grads = {}, {}
        for name, fn in impls.items():
            times = []
            for _ in range(reps + 2):  # the first two untimed: compilation, allocator
                t0 = time.perf_counter()
                y = fn(*inputs)
                grads[name] = (y, *torch.autograd.grad(y, inputs, dy))
                times.append(time.perf_counter() - t0)
            ms[name] = 1e3 * statistics.median(times[2:])
        # every formulation computes the same function: the largest difference from SDPA's
        diff = max((a - b).abs().max().item() for name in impls for a, b in zip(grads[name], grads["sdpa"]))
        out.append({"size": size, "shape": [batch, cfg.n_head, cfg.block_size, cfg.head_dim], "ms": ms,
                    "max_abs_diff": diff})
        print(f"  attention {size}: " + ", ".join(f"{k} {v:.1f} ms" for k, v in ms.items())
              + f"; max |diff| {diff:.1e}", flush=True)
        torch._dynamo.reset()
    return out


# ---------------------------------------------------------------------------------------------
# Reports

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


def _md_cpu(res: dict) -> str:
    base = res["modes"][0]
    lines = ["# CPU training step, tiny family\n", f"Machine: {res['machine']}\n",
             f"Batch {res['family'][0]['batch']} x {res['family'][0]['seq_len']} tokens; medians of "
             f"{res['steps']} steps after {res['warmup']} untimed; modes interleaved step by step. "
             f"x: speed-up against `{base}` over all timed steps, and over the clean ones (other "
             f"processes below {CLEAN_LOAD} core; '-' where fewer than 3 were clean). CPU s: this "
             "process's CPU time per step, all threads (for one thread, about the wall time on an idle "
             "machine). others: cores that other processes kept busy during the steps (median). "
             f"`train` is what train.py chooses on this CPU: {_mode_words(res['resolved'].get('train'))}.\n"]
    rows = []
    for row in res["family"]:
        for spec, r in row["modes"].items():
            clean = "-" if r["clean_speedup"] is None else f"{r['clean_speedup']:.2f}"
            rows.append([row['size'], spec, f"{r['tokens_per_s']:.0f}", f"{r['speedup']:.2f}", clean,
                         f"{r['median_s']:.3f}", f"{r['median_cpu_s']:.3f}",
                         f"{statistics.median(r['others_load']):.1f}"])
    lines.append(md_table(["member", "mode", "tok/s", "x", "x clean", "s/step", "CPU s/step", "others"], rows))
    lines += ["", "Where the time of a step goes (torch profiler, 3 steps of the profiled mode; share of the ops' "
              "self time):", ""]
    for row in res["family"]:
        shares = ", ".join(f"{name} {share:.0%}" for name, share in row["profile"].items())
        lines.append(f"- {row['size']} (`{row['profiled_mode']}`): {shares}")
    impls = list(res["attention"][0]["ms"])
    lines += ["", "Causal attention alone at each member's shape (batch x heads x T x head_dim, float32), "
              "forward + backward, median ms: `sdpa` is what the model calls (PyTorch's CPU flash kernel), "
              "`sdpa_math` its math backend, `explicit` softmax(QK^T)V written out, then torch.compile'd. "
              "max |diff|: the largest difference of output and gradients from `sdpa`'s.", "",
              md_table(["member", "shape", *impls, "max abs diff"],
                       [[row['size'], 'x'.join(map(str, row['shape'])), *(f"{row['ms'][k]:.1f}" for k in impls),
                         f"{row['max_abs_diff']:.1e}"] for row in res["attention"]])]
    return "\n".join(lines) + "\n"


def _mode_words(mode: dict | None) -> str:
    if mode is None:
        return "(not run)"
    return (f"{'compiled' if mode['compile'] else 'eager'}, {'bf16 autocast' if mode['bf16'] else 'float32'}, "
            f"{'fused' if mode['fused'] else 'foreach'} AdamW, "
            f"{mode['threads'] or 'the default number of'} threads")


def _md_gpu(res: dict) -> str:
    lines = [f"# GPU benchmark\n", f"Machine: {res['machine']}\n"]
    if "correctness" in res:
        bad = [r for r in res["correctness"] if not r["ok"]]
        lines.append(f"Correctness: {len(res['correctness']) - len(bad)}/{len(res['correctness'])} cases within "
                     f"tolerance" + (f"; FAILED: {[(r['kernel'], r['shape'], r['dtype']) for r in bad]}" if bad else "")
                     + "\n")
    if "layer_norm" in res:
        lines += [md_table(["LayerNorm rows x width", "triton GB/s", "eager GB/s", "compiled GB/s", "x eager",
                            "x compiled", "of copy"],
                           [[f"{r['rows']} x {r['width']}", f"{r['GB/s']['triton']:.0f}", f"{r['GB/s']['eager']:.0f}",
                             f"{r['GB/s']['compiled']:.0f}", f"{r['vs_eager']:.2f}", f"{r['vs_compiled']:.2f}",
                             f"{r['of_copy_bandwidth']:.0%}"] for r in res["layer_norm"]]), ""]
    if "attention" in res:
        lines += [md_table(["attention B H T D", "triton TFLOP/s", "SDPA flash", "compiled SDPA", "x flash"],
                           [[f"{r['batch']} {r['heads']} {r['T']} {r['head_dim']}", f"{r['TFLOP/s']['triton']:.0f}",
                             f"{r['TFLOP/s']['eager']:.0f}", f"{r['TFLOP/s']['compiled']:.0f}",
                             f"{r['vs_sdpa_flash']:.2f}"] for r in res["attention"]]), ""]
    if "model" in res:
        m = res["model"]
        rows = []
        for spec, r in m["modes"].items():
            mfu = "n/a" if r["mfu"] is None else f"{r['mfu']:.1%}"
            peak = "n/a" if r["max_memory_allocated_gb"] is None else f"{r['max_memory_allocated_gb']:.1f}"
            rows.append([spec, f"{r['tokens_per_s']:.0f}", mfu, peak, ', '.join(f'{x:.4f}' for x in r['losses'][:3]),
                         f"{r['max_loss_diff_vs_first_mode']:.2e}"])
        lines += [f"{m['size']}, batch {m['batch']} x {m['seq_len']}, median of the timed steps:\n",
                  md_table(["mode", "tok/s", "MFU", "peak GB", "first losses", "max loss diff vs first mode"], rows)]
        lines += [""] + [f"- skipped (time): {spec}" for spec in m["skipped"]]
    peaks = res.get("max_memory_allocated_gb") or {}
    if peaks:
        lines += ["", "Peak memory allocated per section (GB): "
                  + ", ".join(f"{name} {gb:.1f}" for name, gb in peaks.items())]
    lines += [""] + [f"- skipped: {note}" for note in res.get("skipped", [])]
    return "\n".join(lines) + "\n"


def _md_aot(res: dict) -> str:
    rows = res["rows"]
    lines = ["# Kernels compiled for GPU architectures, on a machine without a GPU\n",
             f"Machine: {res['machine']}\n",
             f"`python bench.py --aot --sm {','.join(map(str, res['sm']))}`: every launch of a forward and backward, "
             "each autotuning candidate, compiled by Triton for the architecture; registers and spilled bytes "
             "per thread from the cubin (cuobjdump), shared memory per block against the architecture's limit "
             f"({', '.join(f'sm_{k}: {v // 1024} KiB' for k, v in SHARED_LIMIT.items() if k in res['sm'])}). "
             "A candidate that spills or does not fit is not an error (the autotuner skips or outtimes it), "
             "but every launch needs one that fits without spilling.\n",
             f"Problems: {'; '.join(res['problems']) if res['problems'] else 'none'}\n"]
    cells = []
    for r in rows:
        tiles = " ".join(f"{k[6:]}={v}" for k, v in r["tiles"].items()) or "-"
        head = [str(r['sm']), r['case'], r['kernel'], tiles, str(r['num_warps']), str(r['num_stages'])]
        if "error" in r:
            cells.append(head + [f"ERROR: {r['error']}", "", "", "", ""])
        else:
            cells.append(head + [str(r['registers']), str(r['spill_bytes']), f"{r['shared_bytes'] / 1024:.1f}",
                                 'yes' if r['fits'] else 'NO', str(r['tensor_cores'])])
    lines.append(md_table(["sm", "case", "kernel", "tiles", "warps", "stages", "regs", "spilled B", "shared KiB",
                           "fits", "tensor cores"], cells))
    return "\n".join(lines) + "\n"


def _save(out_dir: str, name: str, res: dict, md) -> None:
    write_json(f"{out_dir}/{name}.json", res)
    atomic_write(f"{out_dir}/{name}.md", lambda f: f.write(md(res)), mode="w")


def run_gpu_all(args) -> None:
    if not torch.cuda.is_available():
        raise UserError("--gpu_all needs a CUDA GPU; on CPU use --cpu")
    deadline = time.perf_counter() + args.budget_s
    run_sections([("correctness", gpu_correctness),
                  ("model", lambda: gpu_model_speed(args.size, args.batch, args.steps, args.warmup,
                                                    args.model_compile, deadline)),
                  ("layer_norm", gpu_layer_norm_speed), ("attention", gpu_attention_speed)],
                 args.out, deadline)


def run_sections(sections, out_dir: str, deadline: float) -> dict:
    """Run (name, function) sections in order into one result, saved after each; a section that
    raises is reported and the next one runs (one run on a lent GPU must not lose the rest); none
    starts after `deadline` (time.perf_counter)."""
    t0 = time.perf_counter()
    res = {"machine": machine(), "skipped": [], "max_memory_allocated_gb": {}}
    print(f"machine: {res['machine']}", flush=True)
    cuda = torch.cuda.is_available()
    for name, run in sections:
        if time.perf_counter() > deadline:
            res["skipped"].append(f"{name} (past the time budget, --budget_s)")
            continue
        print(f"[{name}] at {time.perf_counter() - t0:.0f} s", flush=True)
        if cuda:
            reset_peak_memory("cuda")
        try:
            res[name] = run()
        except Exception as e:
            traceback.print_exc()
            res["skipped"].append(f"{name} failed: {type(e).__name__}: {e}")
        if cuda:
            res["max_memory_allocated_gb"][name] = max_memory_gb("cuda")
        _save(out_dir, "results_gpu", res, _md_gpu)  # after every section: a timeout keeps the rest
    print(_md_gpu(res))
    if not all(r["ok"] for r in res.get("correctness", [])) or any("failed" in s for s in res["skipped"]):
        raise UserError(f"some checks failed or sections broke: see {out_dir}/results_gpu.md")
    return res


def run_cpu(args) -> None:
    modes = args.cpu_modes.split(",")
    resolved = {spec: dataclasses.asdict(StepMode.parse(spec)) for spec in modes}  # mistakes surface now
    res = {"machine": machine(), "steps": args.steps, "warmup": args.warmup, "modes": modes, "resolved": resolved}
    print(f"machine: {res['machine']}", flush=True)
    res["family"] = cpu_family_speed(args.sizes.split(","), modes, args.steps, args.warmup)
    res["attention"] = cpu_attention_speed(args.sizes.split(","), args.steps)
    _save(args.out, "results_cpu", res, _md_cpu)
    print(_md_cpu(res))


def run_aot(args) -> None:
    sms = [int(s) for s in args.sm.split(",")]
    if not sms or any(s not in SHARED_LIMIT for s in sms):
        raise UserError(f"--sm takes compute capabilities from {sorted(SHARED_LIMIT)}, e.g. 90,80")
    t0 = time.perf_counter()
    res = {"machine": machine(), "sm": sms, "quick": args.quick}
    res["rows"] = aot_compile(aot_cases(args.quick), sms)
    res["problems"], res["seconds"] = aot_problems(res["rows"]), time.perf_counter() - t0
    _save(args.out, "results_aot", res, _md_aot)
    print(f"{len(res['rows'])} compilations in {res['seconds']:.0f} s; problems: {res['problems'] or 'none'}")
    if res["problems"]:
        raise UserError(f"{len(res['problems'])} problems for the GPU: see {args.out}/results_aot.md")


def main():
    args = parse_args()
    args.sizes = args.sizes or ",".join(FAMILIES["tiny"])
    if args.steps < 1 or args.warmup < 0:
        raise UserError("--steps must be >= 1 and --warmup >= 0")
    for size in args.sizes.split(",") + [args.size]:
        if size not in PRESETS:
            raise UserError(f"unknown size {size!r}; choose from {', '.join(PRESETS)}")
    run_gpu_all(args) if args.gpu_all else run_cpu(args) if args.cpu else run_aot(args)


if __name__ == "__main__":
    run_cli(main)
