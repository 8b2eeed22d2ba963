"""
The Triton kernels compiled for GPU architectures on a machine without a GPU (about 3 minutes on 2 cores):

    python bench/aot.py --out bench/

  compiles every kernel launch (each autotuning candidate, float32/bfloat16/float16, paper and tiny
  shapes) for sm_90 (H100/H200) and sm_80 (A100) with Triton's compiler, and reads registers,
  spills, shared memory and tensor-core use from the machine code.

Results go to OUT/results_aot.json and a short OUT/results_aot.md.
"""
import argparse
import contextlib
import dataclasses
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from util import ArgumentParser, UserError, check_args, md_table, run_cli  # noqa: E402  first: see util.py


def parse_args(argv=None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="bench", help="folder for results_aot.{json,md}")
    p.add_argument("--sm", default="90,80", help="comma-separated compute capabilities (90: H100/H200, 80: A100)")
    p.add_argument("--quick", action="store_true", help="LayerNorm 4096 and head_dim 128 only (bf16; attention also float32)")
    return p.parse_args(argv)


check_args(__name__, parse_args)  # --help and usage errors before torch loads
import torch  # noqa: E402

from bench.common import machine, save_results  # noqa: E402

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
def _md_aot(res: dict) -> str:
    rows = res["rows"]
    lines = ["# Kernels compiled for GPU architectures, on a machine without a GPU\n",
             f"Machine: {res['machine']}\n",
             f"`python bench/aot.py --sm {','.join(map(str, res['sm']))}`: every launch of a forward and backward, "
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


def run_aot(args) -> None:
    sms = [int(s) for s in args.sm.split(",")]
    if not sms or any(s not in SHARED_LIMIT for s in sms):
        raise UserError(f"--sm takes compute capabilities from {sorted(SHARED_LIMIT)}, e.g. 90,80")
    t0 = time.perf_counter()
    res = {"machine": machine(), "sm": sms, "quick": args.quick}
    res["rows"] = aot_compile(aot_cases(args.quick), sms)
    res["problems"], res["seconds"] = aot_problems(res["rows"]), time.perf_counter() - t0
    save_results(args.out, "results_aot", res, _md_aot)
    print(f"{len(res['rows'])} compilations in {res['seconds']:.0f} s; problems: {res['problems'] or 'none'}")
    if res["problems"]:
        raise UserError(f"{len(res['problems'])} problems for the GPU: see {args.out}/results_aot.md")


def main():
    run_aot(parse_args())


if __name__ == "__main__":
    run_cli(main)
