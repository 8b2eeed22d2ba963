"""
Fused Triton kernels for the two memory-hungry layers of the GPT: LayerNorm (and RMSNorm) and causal
attention, forward and backward. model.py calls `layer_norm`, `rms_norm` and `causal_attention` on
CUDA (GPT.set_kernels); on CPU they run only under Triton's interpreter (TRITON_INTERPRET=1), which
is how the tests check them against a float64 reference. Grouped-query attention (Llama members)
expands each key/value head to its group's query heads before the attention kernel, which reads
one key/value head per query head (repeat_interleave: a copy, which the backward sums back).

LayerNorm, one row x of width N (w, b the learned gain and bias, eps the variance floor):

    mu = sum_j x_j / N      var = sum_j (x_j - mu)^2 / N      rstd = 1 / sqrt(var + eps)
    xhat = (x - mu) * rstd          y = xhat * w + b

  The forward kernel keeps the whole row in registers: one read of x, one write of y, and it saves
  mu and rstd (4 bytes each per row) so the backward need not recompute them. Backward, with
  g = dy * w the gradient reaching xhat:

    dx = rstd * (g - mean_j(g) - xhat * mean_j(g * xhat))
    dw = sum over rows of dy * xhat        db = sum over rows of dy

  dx is row-local; dw and db are reductions across all rows, so each backward program walks a
  contiguous group of rows, keeps its partial sums in registers and writes one partial row; a
  torch sum over the (few hundred) partial rows finishes it. No atomics: the result is deterministic.

RMSNorm (Llama members), the same with no mean and no bias: rstd = 1 / sqrt(sum_j x_j^2 / N + eps),
  xhat = x * rstd, y = xhat * w; backward dx = rstd * (g - xhat * mean_j(g * xhat)), dw as above.

Causal attention, per (batch, head), with s = 1/sqrt(head_dim) and i >= j the causal mask:

    S = s * Q K^T      P = softmax_rows(S masked to j <= i)      O = P V

  The forward (FlashAttention) never materialises the T x T matrix P. A program owns a tile of
  BLOCK_M query rows and walks the key/value tiles left to right with an *online softmax*: it keeps
  per row the running maximum m, the running denominator l and an unnormalised accumulator acc.
  For each new tile of scores S_j:

    m' = max(m, rowmax(S_j))
    l  = l * exp(m - m') + rowsum(exp(S_j - m'))
    acc = acc * exp(m - m') + exp(S_j - m') V_j          (rescale what was summed under the old max)

  and at the end O = acc / l and LSE = m + log(l), the log-sum-exp of the row, saved for the
  backward. exp is computed as exp2 with log2(e) folded into the scale (exp2 is the hardware op).
  Tiles wholly below the diagonal need no mask; only the diagonal tiles pay for the causal `where`.

  Backward (FlashAttention-2): recompute P = exp(S - LSE) tile by tile from the saved LSE, and with
  delta_i = sum_d dO_id O_id = sum_j P_ij dP_ij (a cheap preprocessing pass over dO and O):

    dV = P^T dO        dP = dO V^T        dS = P * (dP - delta)        dQ = s dS K        dK = s dS^T Q

  (dS is dP through the softmax's Jacobian: dS_ij = P_ij (dP_ij - sum_k P_ik dP_ik).)
  dK and dV are sums over query rows, dQ a sum over key rows, so two kernels: one program per key
  tile accumulates dK, dV over the query tiles at or after it; one per query tile accumulates dQ
  over the key tiles at or before it. Every accumulation is in float32 whatever the input dtype.

Limits: head_dim a power of two >= 16 (tl.dot and tl.arange need it); LayerNorm rows up to 64 KiB
(65536 / bytes per element) in one block; any sequence length and width (tiles are masked);
offsets are int32, so each tensor under 2^31 elements.
float32, float16 and bfloat16 on GPU. float32 dots use full IEEE precision, not TF32, so float32
matches PyTorch's own ops (slowly: float32 is for checking, train in bf16). The attention tiles are
autotuned on the first call for each (head_dim, dtype) from a few candidates (bench/gpu.py prints the
winners). Under the interpreter every tile is cast to float32 before any arithmetic, since the
interpreter's bfloat16 tl.dot multiplies raw bit patterns (triton-lang/triton#11584).

Each kernel launcher is a torch.library.custom_op with a fake (shape-only) implementation, so
torch.compile treats it as one opaque call instead of tracing into Triton; a torch.autograd.Function
ties each forward to its backward.
"""
import math

import torch
import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)  # log2(e): exp(x) = exp2(x * LOG2E)


def _empty(shape, dtype, device) -> torch.Tensor:
    """Every buffer a kernel writes comes from here: the tests fill them with NaN instead, so an
    element a kernel forgets to write cannot pass."""
    return torch.empty(shape, dtype=dtype, device=device)


# ---------------------------------------------------------------------------------------------
# LayerNorm

@triton.jit
def _ln_fwd(X, Y, W, B, Mean, Rstd, stride_x, N, eps, BLOCK_N: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    mask = cols < N
    x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=0) / N
    xc = tl.where(mask, x - mean, 0.0)  # two-pass variance: no cancellation of E[x^2] - mu^2
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=0) / N + eps)
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(B + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(Y + row * N + cols, (xc * rstd * w + b).to(Y.dtype.element_ty), mask=mask)
    tl.store(Mean + row, mean)
    tl.store(Rstd + row, rstd)


@triton.jit
def _ln_bwd(DY, X, W, Mean, Rstd, DX, DW_partial, DB_partial, stride_dy, stride_x, M, N,
            ROWS_PER_PROGRAM, BLOCK_N: tl.constexpr):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    mask = cols < N
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    dw = tl.zeros((BLOCK_N,), dtype=tl.float32)
    db = tl.zeros((BLOCK_N,), dtype=tl.float32)
    row_start = pid * ROWS_PER_PROGRAM
    for row in range(row_start, tl.minimum(row_start + ROWS_PER_PROGRAM, M)):
        x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + row * stride_dy + cols, mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(Rstd + row)
        xhat = tl.where(mask, (x - tl.load(Mean + row)) * rstd, 0.0)
        g = dy * w
        dx = rstd * (g - tl.sum(g, axis=0) / N - xhat * (tl.sum(g * xhat, axis=0) / N))
        tl.store(DX + row * N + cols, dx.to(DX.dtype.element_ty), mask=mask)
        dw += dy * xhat
        db += dy
    tl.store(DW_partial + pid * N + cols, dw, mask=mask)
    tl.store(DB_partial + pid * N + cols, db, mask=mask)


def _ln_launch_params(x2d: torch.Tensor):
    """Block width and warps for one row: the whole row in one block, ~256 elements per warp."""
    N = x2d.shape[1]
    max_n = 65536 // x2d.element_size()
    if N > max_n:
        raise ValueError(f"layer_norm kernel holds a row in one block: width {N} > {max_n}")
    block_n = triton.next_power_of_2(N)
    return block_n, min(max(block_n // 256, 1), 8)


def _rows(x: torch.Tensor) -> torch.Tensor:
    """View x as (rows, width) with unit stride along the width (copying only if needed)."""
    x2d = x.reshape(-1, x.shape[-1])
    return x2d if x2d.stride(1) == 1 else x2d.contiguous()


@torch.library.custom_op("gpt_kernels::layer_norm_fwd", mutates_args=())
def layer_norm_fwd(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                   eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (y like x, mean (rows,) float32, rstd (rows,) float32)."""
    x2d = _rows(x)
    M, N = x2d.shape
    y = _empty(x.shape, x.dtype, x.device)
    mean, rstd = _empty((M,), torch.float32, x.device), _empty((M,), torch.float32, x.device)
    block_n, num_warps = _ln_launch_params(x2d)
    _ln_fwd[(M,)](x2d, y, weight, bias, mean, rstd, x2d.stride(0), N, eps,
                  BLOCK_N=block_n, num_warps=num_warps)
    return y, mean, rstd


@layer_norm_fwd.register_fake
def _(x, weight, bias, eps):
    M = x.numel() // x.shape[-1]
    return (torch.empty_like(x, memory_format=torch.contiguous_format),
            x.new_empty(M, dtype=torch.float32), x.new_empty(M, dtype=torch.float32))


def _ln_bwd_programs(M: int, device: torch.device) -> int:
    """How many row groups the backward splits into: enough to fill the GPU a few times over."""
    if _INTERPRETED:
        return min(M, 4)  # each interpreted program costs milliseconds: few, long ones
    return min(M, 4 * torch.cuda.get_device_properties(device).multi_processor_count)


@torch.library.custom_op("gpt_kernels::layer_norm_bwd", mutates_args=())
def layer_norm_bwd(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, mean: torch.Tensor,
                   rstd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (dx like x, dweight, dbias like weight)."""
    x2d, dy2d = _rows(x), _rows(dy)
    M, N = x2d.shape
    dx = _empty(x.shape, x.dtype, x.device)
    programs = _ln_bwd_programs(M, x.device)
    dw_partial = _empty((programs, N), torch.float32, x.device)
    db_partial = _empty((programs, N), torch.float32, x.device)
    block_n, num_warps = _ln_launch_params(x2d)
    _ln_bwd[(programs,)](dy2d, x2d, weight, mean, rstd, dx, dw_partial, db_partial,
                         dy2d.stride(0), x2d.stride(0), M, N, triton.cdiv(M, programs),
                         BLOCK_N=block_n, num_warps=num_warps)
    return dx, dw_partial.sum(0).to(weight.dtype), db_partial.sum(0).to(weight.dtype)


@layer_norm_bwd.register_fake
def _(dy, x, weight, mean, rstd):
    return (torch.empty_like(x, memory_format=torch.contiguous_format),
            torch.empty_like(weight), torch.empty_like(weight))


class LayerNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        y, mean, rstd = layer_norm_fwd(x, weight, bias, eps)
        ctx.save_for_backward(x, weight, mean, rstd)
        return y

    @staticmethod
    def backward(ctx, dy):
        dx, dw, db = layer_norm_bwd(dy, *ctx.saved_tensors)
        return dx, dw, db, None


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5):
    """LayerNorm over the last dimension of x, like F.layer_norm(x, (N,), weight, bias, eps)."""
    return LayerNormFunction.apply(x, weight, bias, eps)


# ---------------------------------------------------------------------------------------------
# RMSNorm (Llama members): LayerNorm without the mean and the bias, the same launch layout.


@triton.jit
def _rms_fwd(X, Y, W, Rstd, stride_x, N, eps, BLOCK_N: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    mask = cols < N
    x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / N + eps)
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(Y + row * N + cols, (x * rstd * w).to(Y.dtype.element_ty), mask=mask)
    tl.store(Rstd + row, rstd)


@triton.jit
def _rms_bwd(DY, X, W, Rstd, DX, DW_partial, stride_dy, stride_x, M, N, ROWS_PER_PROGRAM,
             BLOCK_N: tl.constexpr):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    mask = cols < N
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    dw = tl.zeros((BLOCK_N,), dtype=tl.float32)
    row_start = pid * ROWS_PER_PROGRAM
    for row in range(row_start, tl.minimum(row_start + ROWS_PER_PROGRAM, M)):
        xhat = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32) * tl.load(Rstd + row)
        dy = tl.load(DY + row * stride_dy + cols, mask=mask, other=0.0).to(tl.float32)
        g = dy * w
        dx = tl.load(Rstd + row) * (g - xhat * (tl.sum(g * xhat, axis=0) / N))
        tl.store(DX + row * N + cols, dx.to(DX.dtype.element_ty), mask=mask)
        dw += dy * xhat
    tl.store(DW_partial + pid * N + cols, dw, mask=mask)


@torch.library.custom_op("gpt_kernels::rms_norm_fwd", mutates_args=())
def rms_norm_fwd(x: torch.Tensor, weight: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (y like x, rstd (rows,) float32)."""
    x2d = _rows(x)
    M, N = x2d.shape
    y, rstd = _empty(x.shape, x.dtype, x.device), _empty((M,), torch.float32, x.device)
    block_n, num_warps = _ln_launch_params(x2d)
    _rms_fwd[(M,)](x2d, y, weight, rstd, x2d.stride(0), N, eps, BLOCK_N=block_n, num_warps=num_warps)
    return y, rstd


@rms_norm_fwd.register_fake
def _(x, weight, eps):
    return (torch.empty_like(x, memory_format=torch.contiguous_format),
            x.new_empty(x.numel() // x.shape[-1], dtype=torch.float32))


@torch.library.custom_op("gpt_kernels::rms_norm_bwd", mutates_args=())
def rms_norm_bwd(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                 rstd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (dx like x, dweight like weight)."""
    x2d, dy2d = _rows(x), _rows(dy)
    M, N = x2d.shape
    dx = _empty(x.shape, x.dtype, x.device)
    programs = _ln_bwd_programs(M, x.device)
    dw_partial = _empty((programs, N), torch.float32, x.device)
    block_n, num_warps = _ln_launch_params(x2d)
    _rms_bwd[(programs,)](dy2d, x2d, weight, rstd, dx, dw_partial, dy2d.stride(0), x2d.stride(0), M, N,
                          triton.cdiv(M, programs), BLOCK_N=block_n, num_warps=num_warps)
    return dx, dw_partial.sum(0).to(weight.dtype)


@rms_norm_bwd.register_fake
def _(dy, x, weight, rstd):
    return torch.empty_like(x, memory_format=torch.contiguous_format), torch.empty_like(weight)


class RMSNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps):
        y, rstd = rms_norm_fwd(x, weight, eps)
        ctx.save_for_backward(x, weight, rstd)
        return y

    @staticmethod
    def backward(ctx, dy):
        dx, dw = rms_norm_bwd(dy, *ctx.saved_tensors)
        return dx, dw, None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5):
    """RMSNorm over the last dimension of x, like F.rms_norm(x, (N,), weight, eps)."""
    return RMSNormFunction.apply(x, weight, eps)


# ---------------------------------------------------------------------------------------------
# Causal attention. Q, K, V share one set of strides (they are views of one qkv buffer in
# model.py); O and dO share another; dQ, dK, dV a third. The head dimension has unit stride.

@triton.jit
def _head_offset(bh, H, stride_b, stride_h):
    """Offset of head h of batch b, for the program of (batch x head) index bh = b * H + h."""
    return (bh // H) * stride_b + (bh % H) * stride_h


@triton.jit
def _load_rows(ptr, offs, stride_t, T, HEAD_DIM: tl.constexpr, TRANSPOSED: tl.constexpr,
               UPCAST: tl.constexpr):
    """Rows `offs` of one head's (T, HEAD_DIM) matrix, zero past T; as (HEAD_DIM, rows) if
    TRANSPOSED; float32 if UPCAST."""
    d = tl.arange(0, HEAD_DIM)
    if TRANSPOSED:
        x = tl.load(ptr + offs[None, :] * stride_t + d[:, None], mask=offs[None, :] < T, other=0.0)
    else:
        x = tl.load(ptr + offs[:, None] * stride_t + d[None, :], mask=offs[:, None] < T, other=0.0)
    if UPCAST:
        x = x.to(tl.float32)
    return x


@triton.jit
def _store_rows(ptr, x, offs, stride_t, T, HEAD_DIM: tl.constexpr):
    d = tl.arange(0, HEAD_DIM)
    tl.store(ptr + offs[:, None] * stride_t + d[None, :], x.to(ptr.dtype.element_ty), mask=offs[:, None] < T)


@triton.jit
def _scores(q, K, offs_n, stride_t, T, qk_scale, HEAD_DIM: tl.constexpr, UPCAST: tl.constexpr,
            DOT_PRECISION: tl.constexpr):
    """Scaled scores of query tile q against key rows offs_n, in log2 units (exp2 is cheaper than
    exp), unmasked; and the transposed key tile, which dQ reuses."""
    kT = _load_rows(K, offs_n, stride_t, T, HEAD_DIM, True, UPCAST)
    return tl.dot(q, kT, input_precision=DOT_PRECISION) * qk_scale, kT


@triton.jit
def _attn_fwd_inner(acc, l_i, m_i, q, K, V, stride_t, offs_m, lo, hi, T, qk_scale,
                    HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL_MASK: tl.constexpr,
                    UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Fold the key/value tiles in [lo, hi) into the online softmax state (acc, l_i, m_i)."""
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        s, kT = _scores(q, K, offs_n, stride_t, T, qk_scale, HEAD_DIM, UPCAST, DOT_PRECISION)
        v = _load_rows(V, offs_n, stride_t, T, HEAD_DIM, False, UPCAST)
        if CAUSAL_MASK:
            s = tl.where(offs_m[:, None] >= offs_n[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)  # rescales what was summed under the old maximum
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=DOT_PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _attn_fwd(Q, K, V, O, LSE, sm_scale, stride_b, stride_h, stride_t, stride_ob, stride_oh,
              stride_ot, H, T, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
              UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr):
    tl.static_assert(BLOCK_M % BLOCK_N == 0)
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    in_off = _head_offset(bh, H, stride_b, stride_h)
    Q, K, V = Q + in_off, K + in_off, V + in_off
    offs_m = start_m + tl.arange(0, BLOCK_M)
    q = _load_rows(Q, offs_m, stride_t, T, HEAD_DIM, False, UPCAST)
    qk_scale = sm_scale * LOG2E
    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, HEAD_DIM), dtype=tl.float32)
    # key tiles wholly before this query tile: every score visible, no mask
    acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, q, K, V, stride_t, offs_m, 0, start_m, T, qk_scale,
                                    HEAD_DIM, BLOCK_N, False, UPCAST, DOT_PRECISION)
    # the diagonal tiles: mask keys after the query. Key 0 is visible to every row, so m_i is
    # finite by now and no row divides by zero.
    acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, q, K, V, stride_t, offs_m, start_m,
                                    tl.minimum(start_m + BLOCK_M, T), T, qk_scale,
                                    HEAD_DIM, BLOCK_N, True, UPCAST, DOT_PRECISION)
    _store_rows(O + _head_offset(bh, H, stride_ob, stride_oh), acc / l_i[:, None], offs_m, stride_ot, T, HEAD_DIM)
    # LSE = m + log l, back from log2 units to natural ones
    tl.store(LSE + bh * T + offs_m, (m_i + tl.log2(l_i)) / LOG2E, mask=offs_m < T)


@triton.jit
def _attn_bwd_delta(O, DO, Delta, stride_ob, stride_oh, stride_ot, H, T,
                    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr):
    """delta_i = sum_d dO_id * O_id, one value per query row."""
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    bh = tl.program_id(1)
    o_off = _head_offset(bh, H, stride_ob, stride_oh)
    o = _load_rows(O + o_off, offs_m, stride_ot, T, HEAD_DIM, False, True)
    do = _load_rows(DO + o_off, offs_m, stride_ot, T, HEAD_DIM, False, True)
    tl.store(Delta + bh * T + offs_m, tl.sum(o * do, axis=1), mask=offs_m < T)


@triton.jit
def _attn_bwd_dkdv_inner(dk, dv, k, v, Q, DO, LSE, Delta, stride_t, stride_ot, offs_n, lo, hi, T,
                         qk_scale, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
                         CAUSAL_MASK: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Add the query tiles in [lo, hi) to this key tile's dK and dV (all transposed: keys x queries)."""
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        qT = _load_rows(Q, offs_m, stride_t, T, HEAD_DIM, True, UPCAST)
        do = _load_rows(DO, offs_m, stride_ot, T, HEAD_DIM, False, UPCAST)
        # rows past T get LSE = +inf, hence P = 0: they add nothing
        lse = tl.load(LSE + offs_m, mask=offs_m < T, other=float("inf"))
        delta = tl.load(Delta + offs_m, mask=offs_m < T, other=0.0)
        pT = tl.exp2(tl.dot(k, qT, input_precision=DOT_PRECISION) * qk_scale - lse[None, :] * LOG2E)
        if CAUSAL_MASK:
            pT = tl.where(offs_m[None, :] >= offs_n[:, None], pT, 0.0)
        dv = tl.dot(pT.to(do.dtype), do, dv, input_precision=DOT_PRECISION)  # dV = P^T dO
        dpT = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)  # dP^T = V dO^T
        dsT = pT * (dpT - delta[None, :])  # dS = P * (dP - delta)
        dk = tl.dot(dsT.to(qT.dtype), tl.trans(qT), dk, input_precision=DOT_PRECISION)  # dS^T Q
    return dk, dv


@triton.jit
def _attn_bwd_dkdv(Q, K, V, DO, LSE, Delta, DK, DV, sm_scale, stride_b, stride_h, stride_t,
                   stride_ob, stride_oh, stride_ot, stride_gb, stride_gh, stride_gt, H, T,
                   HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr):
    tl.static_assert(BLOCK_N % BLOCK_M == 0)
    start_n = tl.program_id(0) * BLOCK_N
    bh = tl.program_id(1)
    in_off = _head_offset(bh, H, stride_b, stride_h)
    Q, K, V = Q + in_off, K + in_off, V + in_off
    DO = DO + _head_offset(bh, H, stride_ob, stride_oh)
    LSE, Delta = LSE + bh * T, Delta + bh * T
    offs_n = start_n + tl.arange(0, BLOCK_N)
    k = _load_rows(K, offs_n, stride_t, T, HEAD_DIM, False, UPCAST)
    v = _load_rows(V, offs_n, stride_t, T, HEAD_DIM, False, UPCAST)
    qk_scale = sm_scale * LOG2E
    dk = tl.zeros((BLOCK_N, HEAD_DIM), dtype=tl.float32)
    dv = tl.zeros((BLOCK_N, HEAD_DIM), dtype=tl.float32)
    # query tiles on the diagonal (they see only part of this key tile), then those after it
    diag_end = tl.minimum(start_n + BLOCK_N, T)
    dk, dv = _attn_bwd_dkdv_inner(dk, dv, k, v, Q, DO, LSE, Delta, stride_t, stride_ot, offs_n,
                                  start_n, diag_end, T, qk_scale, HEAD_DIM, BLOCK_M, True, UPCAST,
                                  DOT_PRECISION)
    dk, dv = _attn_bwd_dkdv_inner(dk, dv, k, v, Q, DO, LSE, Delta, stride_t, stride_ot, offs_n,
                                  diag_end, T, T, qk_scale, HEAD_DIM, BLOCK_M, False, UPCAST,
                                  DOT_PRECISION)
    g_off = _head_offset(bh, H, stride_gb, stride_gh)
    _store_rows(DK + g_off, dk * sm_scale, offs_n, stride_gt, T, HEAD_DIM)
    _store_rows(DV + g_off, dv, offs_n, stride_gt, T, HEAD_DIM)


@triton.jit
def _attn_bwd_dq_inner(dq, q, do, lse, delta, K, V, stride_t, offs_m, lo, hi, T, qk_scale,
                       HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL_MASK: tl.constexpr,
                       UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Add the key tiles in [lo, hi) to this query tile's dQ."""
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        # V's tile first: issued after the scores, ptxas spilled float32's 16 x 16 tile (bench/aot.py)
        vT = _load_rows(V, offs_n, stride_t, T, HEAD_DIM, True, UPCAST)
        s, kT = _scores(q, K, offs_n, stride_t, T, qk_scale, HEAD_DIM, UPCAST, DOT_PRECISION)
        p = tl.exp2(s - lse[:, None] * LOG2E)  # P recomputed from the saved log-sum-exp
        if CAUSAL_MASK:
            p = tl.where(offs_m[:, None] >= offs_n[None, :], p, 0.0)
        dp = tl.dot(do, vT, input_precision=DOT_PRECISION)  # dP = dO V^T
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(kT.dtype), tl.trans(kT), dq, input_precision=DOT_PRECISION)  # dS K
    return dq


@triton.jit
def _attn_bwd_dq(Q, K, V, DO, LSE, Delta, DQ, sm_scale, stride_b, stride_h, stride_t,
                 stride_ob, stride_oh, stride_ot, stride_gb, stride_gh, stride_gt, H, T,
                 HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr):
    tl.static_assert(BLOCK_M % BLOCK_N == 0)
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    in_off = _head_offset(bh, H, stride_b, stride_h)
    K, V = K + in_off, V + in_off
    offs_m = start_m + tl.arange(0, BLOCK_M)
    q = _load_rows(Q + in_off, offs_m, stride_t, T, HEAD_DIM, False, UPCAST)
    do = _load_rows(DO + _head_offset(bh, H, stride_ob, stride_oh), offs_m, stride_ot, T, HEAD_DIM, False, UPCAST)
    lse = tl.load(LSE + bh * T + offs_m, mask=offs_m < T, other=float("inf"))
    delta = tl.load(Delta + bh * T + offs_m, mask=offs_m < T, other=0.0)
    qk_scale = sm_scale * LOG2E
    dq = tl.zeros((BLOCK_M, HEAD_DIM), dtype=tl.float32)
    # key tiles before the diagonal (all visible), then the diagonal ones (masked)
    dq = _attn_bwd_dq_inner(dq, q, do, lse, delta, K, V, stride_t, offs_m, 0, start_m, T, qk_scale,
                            HEAD_DIM, BLOCK_N, False, UPCAST, DOT_PRECISION)
    dq = _attn_bwd_dq_inner(dq, q, do, lse, delta, K, V, stride_t, offs_m, start_m,
                            tl.minimum(start_m + BLOCK_M, T), T, qk_scale,
                            HEAD_DIM, BLOCK_N, True, UPCAST, DOT_PRECISION)
    _store_rows(DQ + _head_offset(bh, H, stride_gb, stride_gh), dq * sm_scale, offs_m, stride_gt, T, HEAD_DIM)


# Whether Triton runs these kernels through its CPU interpreter (TRITON_INTERPRET=1 at import).
_INTERPRETED = not isinstance(_attn_fwd, triton.runtime.JITFunction)


def _tile_configs(big: str, small: str, gpu_shapes, interp_shape):
    """Autotuning candidates: (big tile, small tile, warps, stages) on GPU, then float32's own
    config; one small config under the interpreter, where every program costs milliseconds. The
    big tile is a multiple of the small one, so that diagonal tiles line up."""
    if _INTERPRETED:
        return [triton.Config({big: interp_shape[0], small: interp_shape[1]})]
    return [triton.Config({big: b, small: s}, num_warps=w, num_stages=st) for b, s, w, st in gpu_shapes + FLOAT32_TILES]


# float32 dots (IEEE, for checking) are FMA loops that keep their operands in registers: at
# head_dim 128, tiles larger than 32 x 16 over 8 warps spill (bench/aot.py); the second
# candidate covers the shapes where ptxas spills a register of the first on A100.
FLOAT32_TILES = [(32, 16, 8, 2), (16, 16, 4, 1)]


def _by_dtype(configs, named_args, **kwargs):
    """float32 takes its own last configs; 16-bit inputs tune over the others."""
    if len(configs) == 1:  # the interpreter's single config
        return configs
    n = len(FLOAT32_TILES)
    return configs[-n:] if named_args["Q"].dtype == torch.float32 else configs[:-n]


def _autotuned(kernel, big: str, small: str, gpu_shapes):
    # Tuned once per (head_dim, dtypes): the sequence length is left out of the key so that
    # evaluation at other lengths does not retune. Configurations that do not fit the GPU's
    # registers or shared memory are skipped by the autotuner.
    return triton.autotune(_tile_configs(big, small, gpu_shapes, (32, 16)), key=["HEAD_DIM"],
                           prune_configs_by={"early_config_prune": _by_dtype})(kernel)


# Candidates that compile without register spills on sm_90 at head_dim 16, 64 and 128 (bench/aot.py;
# 128 x 128 forward tiles need 224 KiB of shared memory: H100/H200 only).
_attn_fwd_tuned = _autotuned(_attn_fwd, "BLOCK_M", "BLOCK_N",
                             [(128, 64, 8, 3), (128, 128, 8, 3), (64, 64, 4, 3), (64, 32, 4, 2)])
_attn_bwd_dkdv_tuned = _autotuned(_attn_bwd_dkdv, "BLOCK_N", "BLOCK_M",
                                  [(128, 32, 8, 3), (64, 64, 8, 3), (64, 32, 4, 2), (64, 16, 4, 3)])
_attn_bwd_dq_tuned = _autotuned(_attn_bwd_dq, "BLOCK_M", "BLOCK_N",
                                [(128, 32, 8, 3), (64, 64, 8, 3), (64, 64, 4, 2), (64, 32, 4, 2)])


def _check_attention_inputs(q, k, v):
    if not (q.shape == k.shape == v.shape and q.dim() == 4):
        raise ValueError(f"q, k, v must share one (B, H, T, head_dim) shape, got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    D = q.shape[-1]
    if D < 16 or D & (D - 1):
        raise ValueError(f"attention kernel needs head_dim a power of two >= 16, got {D}")


def _same_strides(*ts):
    """The tensors as they are if they share strides with a unit last stride; else contiguous."""
    if all(t.stride() == ts[0].stride() for t in ts) and ts[0].stride(-1) == 1:
        return ts
    return tuple(t.contiguous() for t in ts)


def _new_output(q: torch.Tensor) -> torch.Tensor:
    """O is stored (B, T, H, D) and returned as its (B, H, T, D) view: then the model's
    y.transpose(1, 2).reshape(B, T, C) is free. The fake implementation uses the same layout."""
    B, H, T, D = q.shape
    return _empty((B, T, H, D), q.dtype, q.device).transpose(1, 2)


def _dot_precision(dtype: torch.dtype) -> str:
    # float32: exact IEEE products (TF32 would cost ~3e-4 relative error); 16-bit: ignored
    return "ieee" if dtype == torch.float32 else "tf32"


@torch.library.custom_op("gpt_kernels::attention_fwd", mutates_args=())
def attention_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (o (B, H, T, D) like q, lse (B, H, T) float32, natural log)."""
    _check_attention_inputs(q, k, v)
    q, k, v = _same_strides(q, k, v)
    B, H, T, D = q.shape
    o = _new_output(q)
    lse = _empty((B, H, T), torch.float32, q.device)
    grid = lambda meta: (triton.cdiv(T, meta["BLOCK_M"]), B * H)  # noqa: E731
    _attn_fwd_tuned[grid](q, k, v, o, lse, 1.0 / math.sqrt(D), *q.stride()[:3], *o.stride()[:3], H, T,
                          HEAD_DIM=D, UPCAST=_INTERPRETED, DOT_PRECISION=_dot_precision(q.dtype))
    return o, lse


@attention_fwd.register_fake
def _(q, k, v):
    B, H, T, D = q.shape
    return _new_output(q), q.new_empty(B, H, T, dtype=torch.float32)


@torch.library.custom_op("gpt_kernels::attention_bwd", mutates_args=())
def attention_bwd(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
                  lse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (dq, dk, dv), each (B, H, T, D) contiguous, dtype of q."""
    q, k, v = _same_strides(q, k, v)
    o, do = _same_strides(o, do)
    B, H, T, D = q.shape
    delta = _empty((B, H, T), torch.float32, q.device)
    _attn_bwd_delta[(triton.cdiv(T, 64), B * H)](o, do, delta, *o.stride()[:3], H, T, HEAD_DIM=D, BLOCK_M=64)
    dq, dk, dv = (_empty(q.shape, q.dtype, q.device) for _ in range(3))
    args = (q, k, v, do, lse, delta)
    strides = (*q.stride()[:3], *o.stride()[:3], *dq.stride()[:3], H, T)
    consts = dict(HEAD_DIM=D, UPCAST=_INTERPRETED, DOT_PRECISION=_dot_precision(q.dtype))
    sm_scale = 1.0 / math.sqrt(D)
    _attn_bwd_dkdv_tuned[lambda meta: (triton.cdiv(T, meta["BLOCK_N"]), B * H)](
        *args, dk, dv, sm_scale, *strides, **consts)
    _attn_bwd_dq_tuned[lambda meta: (triton.cdiv(T, meta["BLOCK_M"]), B * H)](
        *args, dq, sm_scale, *strides, **consts)
    return dq, dk, dv


@attention_bwd.register_fake
def _(do, q, k, v, o, lse):
    return tuple(torch.empty(q.shape, dtype=q.dtype, device=q.device) for _ in range(3))


class CausalAttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v):
        o, lse = attention_fwd(q, k, v)
        ctx.save_for_backward(q, k, v, o, lse)
        return o

    @staticmethod
    def backward(ctx, do):
        return attention_bwd(do, *ctx.saved_tensors)


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(D), causal) v for q, k, v of shape (B, H, T, D), like
    F.scaled_dot_product_attention(q, k, v, is_causal=True)."""
    return CausalAttentionFunction.apply(q, k, v)
