"""The benchmarks: bench/gpu.py (kernels and the training step on a CUDA GPU), bench/cpu.py (the tiny
family's training step on CPU), bench/aot.py (the kernels compiled for GPU architectures without
one), with what they share in bench/common.py; their results lie beside them (results_*.{json,md})."""


def add_step_flags(p, results: str) -> None:
    """The flags of the training-step benchmarks (gpu.py, cpu.py): here, where nothing heavy is
    imported, so that their parsers still answer before torch loads."""
    p.add_argument("--out", default="bench", help=f"folder for {results}.{{json,md}}")
    p.add_argument("--steps", type=int, default=10, help="timed training steps per mode")
    p.add_argument("--warmup", type=int, default=3, help="untimed training steps per mode first (compilation)")
