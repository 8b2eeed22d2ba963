"""
The GPU benchmark of the Triton kernels (gpt_kernels.py) against PyTorch's own ops, and of the training
step. On a CUDA GPU, one prepared run, the sections that matter first (most of the time is Triton
autotuning and torch.compile; no section or model mode starts after --budget_s seconds, 8 minutes
by default, so that a 10-minute slot keeps what ran; results are saved after every section):

    python bench/gpu.py --out bench/

  1. correctness first: the compiled kernels, float32 and bfloat16, forward and backward, against
     float64 PyTorch on fresh random inputs, every output buffer poisoned with NaN beforehand (the
     same comparison tests/test_kernels.py runs on CPU through Triton's interpreter);
  2. causal attention fwd+bwd (8 x 1024 tokens, 16 and 32 heads of 128, bf16): kernel vs
     F.scaled_dot_product_attention (flash backend) eager and compiled, in TFLOP/s;
  3. LayerNorm fwd+bwd at widths 2048 and 4096 (8 x 1024 rows, bf16): kernel vs F.layer_norm eager
     and torch.compile'd, in GB/s of the minimum traffic, against a measured device copy;
  4. last, as it takes longest (two compiled 1b models): a training step of the 1b preset
     (8 x 1024 tokens, bf16 autocast, fused AdamW) with kernels off and on, compiled first, then
     eager, from one initialisation on the same batches: tokens/s, MFU against the device's bf16
     peak (flops.device_peak), peak memory allocated, and each step's loss (on and off should agree
     to bf16 noise).
  Every section also records torch.cuda.max_memory_allocated.

Results go to OUT/results_gpu.json and a short OUT/results_gpu.md. The CPU training step: bench/cpu.py;
the kernels compiled for a GPU without one: bench/aot.py.
"""
import argparse
import math
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from util import ArgumentParser, UserError, check_args, md_table, run_cli  # noqa: E402  first: see util.py
from bench import add_step_flags  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_step_flags(p, "results_gpu")
    p.add_argument("--size", default="1b", help="model preset of the training-step benchmark")
    p.add_argument("--batch", type=int, default=8, help="sequences per training step")
    p.add_argument("--model_compile", action=argparse.BooleanOptionalAction, default=True,
                   help="also time the torch.compile'd model (about a minute of compilation each)")
    p.add_argument("--budget_s", type=float, default=480,
                   help="start no new section or model mode after this many seconds (default 480: "
                        "correctness and the kernel comparisons come first)")
    return p.parse_args(argv)


check_args(__name__, parse_args)  # --help and usage errors before torch loads
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bench.common import (TOLERANCE, StepMode, TrainStep, attention_errors, causal_sdpa, check_run,  # noqa: E402
                          layer_norm_errors, machine, poisoned_outputs, random_batches, save_results, sdpa_with,
                          time_steps)
from flops import device_peak, train_flops_per_token  # noqa: E402
from parallel import GB  # noqa: E402
from model import GPT, get_config  # noqa: E402


# ---------------------------------------------------------------------------------------------
# Correctness: kernels against float64 PyTorch

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
# Training step

def gpu_model_speed(size: str, batch: int, steps: int, warmup: int, compiled: bool, deadline: float,
                    device="cuda") -> dict:
    """Section 4: the same initial weights and batches for every mode; one mode in memory at a time;
    no new mode starts after `deadline` (time.perf_counter)."""
    cfg, device = get_config(size), torch.device(device)
    torch.manual_seed(0)
    with device:  # initialise on the GPU: a billion normal draws on the host take a while
        model = GPT(cfg, use_kernels=False)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    batches = random_batches(warmup + steps, batch, cfg.block_size, cfg.vocab_size, device)
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


def run_gpu_all(args) -> None:
    if not torch.cuda.is_available():
        raise UserError("bench/gpu.py needs a CUDA GPU; on CPU run bench/cpu.py")
    deadline = time.perf_counter() + args.budget_s
    run_sections([("correctness", gpu_correctness), ("attention", gpu_attention_speed),
                  ("layer_norm", gpu_layer_norm_speed),
                  ("model", lambda: gpu_model_speed(args.size, args.batch, args.steps, args.warmup,
                                                    args.model_compile, deadline))],
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
        save_results(out_dir, "results_gpu", res, _md_gpu)  # after every section: a timeout keeps the rest
    print(_md_gpu(res))
    if not all(r["ok"] for r in res.get("correctness", [])) or any("failed" in s for s in res["skipped"]):
        raise UserError(f"some checks failed or sections broke: see {out_dir}/results_gpu.md")
    return res


def main():
    args = parse_args()
    check_run(args.steps, args.warmup, [args.size])
    run_gpu_all(args)


if __name__ == "__main__":
    run_cli(main)
