"""
Grow a checkpoint into the next size of its family: bert2BERT's FPI or AKI for the width, then
stacked, interpolated or zero-initialized blocks for the depth.

    python expand.py --src ckpt_1b.pt --size 2b --method aki --out ckpt_1b_expanded.pt

Notation. Source: L blocks, residual width d, h heads of head_dim e (d = h e), FFN width f.
Target: L', d', h', f', the same e. Weights W[row, col] as nn.Linear stores them (y = W x + b).

Index maps, ONE per dimension, shared by every tensor of every block (drawn from one generator
seeded with --seed, in the order hidden, heads, ffn, and saved in meta["expansion"]):

    g: [n'] -> [n],   g(i) = i for i < n,   g(n), ..., g(n'-1) = pi, pi, pi, ... (cut to n' - n)

with pi a random permutation of [n]: new units copy old ones without replacement, cycling when
n' > 2n, so the copy counts c(j) = |{i : g(i) = j}| differ by at most one. A head is one unit:
its e rows move together, g_a(a) = e g_h(a div e) + a mod e with count c_a(a) = c_h(g_h(a div e)),
and qkv's rows [q | k | v] use g_a in each of the three blocks (g_qkv, c_qkv).

FPI (function-preserving initialization). A tensor that PRODUCES a dimension copies along it; one
that CONSUMES it copies and divides by the copy count (never a bias), for every block l:

    wte'[v, i]  = wte[v, g_d(i)]                      wpe'[t, i] = wpe[t, g_d(i)]
    gamma'[i]   = gamma[g_d(i)],  beta'[i] = beta[g_d(i)]        (ln1, ln2, ln_f)
    qkv'[r, i]  = qkv[g_qkv(r), g_d(i)] / c_d(g_d(i))   bqkv'[r]  = bqkv[g_qkv(r)]
    proj'[i, a] = proj[g_d(i), g_a(a)] / c_a(a)         bproj'[i] = bproj[g_d(i)]
    fc'[u, i]   = fc[g_f(u), g_d(i)] / c_d(g_d(i))      bfc'[u]   = bfc[g_f(u)]
    mproj'[i,u] = mproj[g_d(i), g_f(u)] / c_f(g_f(u))   bmproj'[i] = bmproj[g_d(i)]
    head'[v, i] = head[v, g_d(i)] / c_d(g_d(i))

Why it preserves the function: the widened residual is a copy, x'[i] = x[g_d(i)] (the embeddings
produce copies and every block adds copies), and a consumer sums its copies back,
sum_i W[:, g(i)] x[g(i)] / c(g(i)) = sum_j W[:, j] x[j]. Copied heads compute the same attention
and copied FFN units the same GELU, so heads and FFN are exact for ANY ratio. LayerNorm is not: its
mean over x' is sum_j c(j) x[j] / d', the old mean only when all c(j) are equal. So FPI is exact
when d'/d is an integer and approximate otherwise; tests/test_expand.py bounds the deviation
(max logit difference and KL) for the non-integral tiny pairs, and RESULTS.md's growth table shows
the validation loss right after each growth.

Llama members (model.py: RMSNorm, SwiGLU, RoPE, grouped-query attention, no biases) grow by the
same maps and equations; four rules more:

RoPE. Width grows by whole heads at a fixed head_dim (check_growth refuses another head_dim or
theta or Llama 3.1's frequency scaling): the rotation of a head's pair (k, k + e/2) at position t
is by t w_k, w_k = theta^(-2k/e) (scaled or not, model.rope_inv_freq), which depends on e and on the
pair's place in its head, never on the head, so a copied head rotates its q and k exactly as its
source head does.

GQA, group size G = n_head / n_kv_head fixed (check_growth refuses another). The head unit is a
GROUP: one key/value head and the G query heads that read it. g_h maps key/value heads, and a
group's G query heads are G e adjacent rows of q, so

    g_q(a) = G e g_h(a div (G e)) + a mod (G e)   (q rows; attn.proj's columns)
    g_kv(a) = e g_h(a div e) + a mod e            (k rows and v rows)

and qkv's rows [q | k | v] use g_q, g_kv, g_kv. Query head b' of the grown model reads key/value
head b' div G, a copy of the source's g_h(b' div G), which is exactly the key/value head that its
source query head reads: every query head stays in its group, so copied heads compute the same
attention, exact for any ratio of groups. Why whole groups rather than keeping the key/value heads
and copying query heads within their groups: that grows G with the model, so a family's members
would differ in group size, and every group must grow alike to stay uniform, as transformers'
Llama and SDPA need (n_head = G n_kv_head), so the query heads could only grow by whole multiples.
A fixed G is to GQA what a fixed head_dim is to heads; without GQA (G = 1) the rule is the head map.

SwiGLU. y = proj(silu(gate x) * fc x): an FFN unit u is a row of gate, a row of fc (up) and a
column of proj (down), so gate and fc use one map g_f (gate' as fc' above), and proj's columns are
divided and split unevenly as for GELU: a copied unit computes silu(gate[g(u)] x) * fc[g(u)] x,
the same number. Exact for any ratio.

RMSNorm, RMS(x) = sqrt(mean_i x_i^2). Plain copies give mean_i x'_i^2 = sum_j c(j) x_j^2 / d': the
old mean when every c(j) = d'/d (an integer, uniform ratio), but off otherwise (measured on the
tiny-llama pairs 50k -> 120k and 120k -> 250k with random weights, 3 seeds: max logit difference
0.31-0.53 of the largest logit, KL 7e-3 to 1.7e-2 nats/token, like LayerNorm's). So the residual
copies are SCALED, which keeps the function exactly for any ratio:

    s(i) = sqrt(d' / (d c_d(g_d(i))))                    (rms_scale; 1 at integer ratios)
    every producer of the residual: W'[i, :] = s(i) W[g_d(i), :] (wte, wpe, attn.proj, mlp.proj
                                             rows and biases; AKI's new rows included)
    every RMSNorm gain:               gamma'[i] = gamma[g_d(i)] / s(i)

The residual becomes x'_i = s(i) x_{g(i)}, so sum_i x'_i^2 = sum_j c(j) (d'/(d c(j))) x_j^2 =
(d'/d) sum_j x_j^2: RMS(x') = RMS(x), and the normalized, gained copy is again x_{g(i)} / RMS(x)
gamma_{g(i)}, exactly. A copy and its source have the same c, so the same s: they stay equal
(twins() finds them as for GPT members). Adam's moments follow the gradient, which scales the
other way: m/s, v/s^2 for producers, m s, v s^2 for gains (with the counts below). LayerNorm has
no such rescue: keeping both its mean and its variance needs sum_{copies of j} s = a and
sum_{copies of j} s^2 = b for every j; a unit with one copy forces a^2 = b, and then the two copies
of another unit would need s_1 s_2 = 0.

A tied head (head = wte) cannot grow exactly: wte' copies, head' divides. Members are untied;
check_growth refuses a tied one, and export_hf.py --import unties.

Symmetry, and the noisy split (--noise, default 0.1). With the equal split above, a copy and its
source have equal producers and equal consumers, so they receive bitwise-equal gradients and Adam
updates forever: the grown model never uses its new width. FPI therefore splits every consumer
entry of a copied unit unevenly among the copies (HyperCloning's noisy cloning):

    W'[:, i] = W[:, g(i)] / c(g(i)) * (1 + noise * (zeta_i - mean_{k: g(k) = g(i)} zeta_k)),   zeta ~ N(0, 1)

entry by entry, for the residual (qkv, fc, head columns), head (proj columns) and FFN (mlp.proj
columns) copies alike. The copies still sum to W[:, g(i)] (their inputs are equal), so FPI stays
exact, but the copies' gradients differ from the first step on. The factor is drawn per entry, not
per copy: one factor per copy would only scale that copy's gradient, which Adam's update ignores.
noise = 0 gives the bare form, whose copies stay twins (`--inspect` shows them).

AKI (advanced knowledge initialization), bert2BERT's equation: the same maps, but the NEW output
rows of every Linear of block l < L-1 (new heads in qkv, new FFN units in mlp.fc and SwiGLU's mlp.gate, and new residual
units in attn.proj and mlp.proj) come from block l+1, whose input side is widened by FPI as above;
the old rows, every LayerNorm, the embeddings and the head are FPI:

    qkv'_l[r]  = qkv'_{l+1}[r],   bqkv'_l[r]  = bqkv'_{l+1}[r]     (r a row of a new head)
    fc'_l[u]   = fc'_{l+1}[u],    bfc'_l[u]   = bfc'_{l+1}[u]      (u >= f)
    proj'_l[i] = proj'_{l+1}[i],  bproj'_l[i] = bproj'_{l+1}[i]    (i >= d; mlp.proj likewise)

So a new residual unit i is no copy of g(i) past the embeddings: block l writes block l+1's update
of g(i) into it. The top block has no l+1. It keeps FPI with the noisy split (--aki_top noise, the
default): the copies separate as under FPI while the block nearest the output, whose rows feed the
logits directly, keeps its function; --aki_top below takes the new rows from block l-1 instead
(measured against it in RESULTS.md's growth table). AKI is not function-preserving by design.

Depth, after the width: target block k copies widened block s(k); with m = L' div L, r = L' mod L,
the r top blocks L-r, ..., L-1 fill the remainder:

    stack:       s = 0, 1, ..., L-1 (m times), then L-r, ..., L-1
    interpolate: s = 0 (m times), 1 (m times), ..., each top block m+1 times, in order
    zero:        s as stack, and every block k >= L has proj = bproj = mproj = bmproj = 0, so it
                 adds nothing to the residual: exact identity in a pre-LN model. Its consumers of
                 heads and FFN units are zero, so no split can tell the copies apart there: their
                 own new rows (qkv, fc) get the factor (1 + noise * zeta) instead, which changes
                 nothing the block adds to the residual

stack and interpolate are not function-preserving: a repeated block adds its update again.

Optimizer state (--optimizer_state; by default the trainer starts a fresh AdamW, as the paper
does). Adam's moments estimate an entry's gradient and its square, so they must follow how FPI
changes the GRADIENT, which is not how it changes the weight. A consumer's input is an exact copy,
so dividing its weights leaves their gradient as it was; every copy of a produced unit receives
1/c of the downstream gradient, because its consumers divide by c (through the LayerNorm too,
when the copies are balanced). So, copying along every axis as for the weights,

    m' = m[g] / c_out,   v' = v[g] / c_out^2,   step carried

with c_out the copy count of the unit an entry produces: rows of a Linear and its bias, the
width columns of wte and wpe, LayerNorm gains and biases; 1 for the head's vocabulary rows. An
AdamW step of the grown model then moves every entry exactly as its source entry moves (exact FPI;
the test checks it, with noise 0: the noisy split moves each copy's gradient off its share by its
factor 1 + noise * zeta, which the moments ignore). Scaling the moments like the weights (m/c, v/c^2 where a weight is divided)
agrees with this only where an entry's in- and out-counts are equal (a doubling of every width);
for wte, wpe, the head and every residual-width bias and gain it is off by a factor of c.
AKI's new rows take the moments of the block their weights come from; the blocks of `zero` depth
start as in a fresh AdamW (step 0, moments 0).

Both the source's and the grown optimizer state are AdamW state_dicts in train.py's layout
(model.group_names: matrices and embeddings, then biases and gains, each in named_parameters()
order); the grown one keeps the source's group hyperparameters, and train.py --init loads it.

Checking that growth grew: `python expand.py --inspect CKPT` counts, per grown dimension and
block, the copies still within 1e-6 of their source in every weight that carries the unit (twins());
train.py runs the same check at the end of a grown stage and warns, and evaluate.py's report lists it.

The expansion works tensor by tensor (peak memory about source + target) and on the meta device.
"""
import argparse
import resource
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from util import ArgumentParser, UserError, check_args, run_cli  # first: see util.py

METHODS = ("aki", "fpi")
DEPTHS = ("stack", "interpolate", "zero")
AKI_TOPS = ("noise", "below")
NOISE = 0.1  # default --noise: each copy's consumer entries carry W/c * (1 + 0.1 zeta)


def parse_args(argv=None) -> argparse.Namespace:
    p = ArgumentParser(
        description="Grow a checkpoint into a larger size of its family (bert2BERT FPI/AKI width, "
                    "then depth). The output is a checkpoint that train.py continues from. With "
                    "--inspect, report which copies of a grown checkpoint are still twins instead.")
    p.add_argument("--src", help="checkpoint to grow (written by train.py or expand.py)")
    p.add_argument("--size", help="target size, a larger preset of the same family (python flops.py --presets)")
    p.add_argument("--method", default="aki", metavar="{" + ",".join(METHODS) + "}",
                   help="width growth: aki = the new output rows of every Linear of block l (heads, "
                        "FFN units, residual units) come from block l+1, not function-preserving; "
                        "fpi = copies, function-preserving (default: aki)")
    p.add_argument("--depth", default="stack", metavar="{" + ",".join(DEPTHS) + "}",
                   help="new blocks: stack = repeat the stack, top blocks fill the rest; interpolate "
                        "= repeat each block next to itself; zero = copies whose output projections "
                        "are zero, an exact identity (default: stack)")
    p.add_argument("--noise", type=float, default=NOISE,
                   help="spread of the split of a copied unit's consumer weights among its copies: "
                        "W/c * (1 + noise * zeta), zeta centred over the copies, so the function is "
                        "kept; it lets the copies learn apart. 0 = exact equal split, copies that "
                        f"stay twins under FPI (default: {NOISE})")
    p.add_argument("--aki_top", default="noise", metavar="{" + ",".join(AKI_TOPS) + "}",
                   help="AKI's top block, which has no block above: noise = FPI with the noisy split; "
                        "below = new rows from the block below (default: noise)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random index maps and the noise (default: 0)")
    p.add_argument("--optimizer_state", action="store_true",
                   help="also grow the AdamW moments (default: none; the trainer starts a fresh "
                        "optimizer, as the paper does)")
    p.add_argument("--out", help="path of the grown checkpoint (written atomically)")
    p.add_argument("--allow_unfinished", action="store_true",
                   help="grow from a training checkpoint whose stage did not finish (stopped by a signal "
                        "or --stop_at); refused by default. A stable-phase checkpoint (train.py "
                        "--stable_ckpt) needs no flag")
    p.add_argument("--reuse", action="store_true",
                   help="keep --out when it was grown from --src as --src is now (its content, not its "
                        "path) with the same settings; else grow it again (run_family.sh does this)")
    p.add_argument("--inspect", metavar="CKPT",
                   help="only report, per grown dimension and block, how many copies of CKPT (grown "
                        "by expand.py, trained or not) are still within 1e-6 of their source")
    return p.parse_args(argv)


check_args(__name__, parse_args)  # --help and usage errors before torch loads
import torch  # noqa: E402

import checkpoint  # noqa: E402
from model import GPT, ROPE_SCALING, GPTConfig, get_config, group_names  # noqa: E402


# ---------------------------------------------------------------------------------------------
# Index maps

@dataclass
class IndexMap:
    g: torch.Tensor  # (n',) long: the source unit each target unit copies
    count: torch.Tensor  # (n',) float: c(g(i)), how many target units copy the same source unit
    new: torch.Tensor  # (n',) bool: the units that did not exist before
    scale: torch.Tensor | None = None  # (n',) RMSNorm's residual scale s(i) (rms_scale); None: 1


def index_map(g: torch.Tensor) -> IndexMap:
    """The map of g, whose first n entries are the n old units (g(i) = i) and the rest copies."""
    n = int(g.max()) + 1
    return IndexMap(g, torch.bincount(g, minlength=n)[g].float(), torch.arange(len(g)) >= n)


def unit_map(n: int, n_new: int, gen: torch.Generator) -> IndexMap:
    """g(i) = i for old units; the new ones cycle through one seeded permutation of [n]."""
    perm = torch.randperm(n, generator=gen)
    cycles = -(-(n_new - n) // n)  # ceil
    return index_map(torch.cat([torch.arange(n), perm.repeat(cycles)[: n_new - n]]))


def rows_of(units: IndexMap, size: int) -> IndexMap:
    """The map of rows when every unit is a block of `size` rows (a head of head_dim rows)."""
    g = (units.g[:, None] * size + torch.arange(size)).flatten()
    return IndexMap(g, units.count.repeat_interleave(size), units.new.repeat_interleave(size))


def qkv_rows(attn: IndexMap, kv: IndexMap, q_width: int, kv_width: int) -> IndexMap:
    """qkv's rows [q | k | v]: the query rows by `attn`, the key and the value rows by `kv`."""
    g = torch.cat([attn.g, kv.g + q_width, kv.g + q_width + kv_width])
    return IndexMap(g, torch.cat([attn.count, kv.count.repeat(2)]), torch.cat([attn.new, kv.new.repeat(2)]))


def all_maps(hidden: IndexMap, heads: IndexMap, ffn: IndexMap, cfg: GPTConfig) -> dict:
    """Dimension name (as LAYOUT uses it) -> IndexMap, from the three unit maps (heads: one unit per
    key/value head with its group of query heads); qkv's rows point into the [q | k | v] of `cfg`
    (the source's to grow, the target's to compare copies)."""
    attn = rows_of(heads, cfg.group_size * cfg.head_dim)  # a group's query heads are adjacent rows
    kv = rows_of(heads, cfg.head_dim)
    qkv = qkv_rows(attn, kv, cfg.n_embd, cfg.kv_heads * cfg.head_dim)
    return {"hidden": hidden, "heads": heads, "attn": attn, "qkv": qkv, "ffn": ffn}


def rms_scale(hidden: IndexMap) -> IndexMap:
    """The residual map with RMSNorm's scale s(i) = sqrt(n' / (n c(g(i)))) (module docstring):
    1 everywhere when every unit has the same number of copies."""
    n, n_new = int(hidden.g.max()) + 1, len(hidden.g)
    return IndexMap(hidden.g, hidden.count, hidden.new, (n_new / (n * hidden.count)).sqrt())


def depth_map(n_layer: int, n_layer_new: int, depth: str) -> list[int]:
    """s(k): the source block that target block k copies (the top blocks fill the remainder)."""
    m, r = divmod(n_layer_new, n_layer)
    if depth == "interpolate":
        return [l for l in range(n_layer) for _ in range(m + (l >= n_layer - r))]
    return list(range(n_layer)) * m + list(range(n_layer - r, n_layer))


# ---------------------------------------------------------------------------------------------
# Which dimension each axis of each tensor carries, and whether it produces or consumes it.

@dataclass(frozen=True)
class Out:  # the tensor produces this dimension along the axis: copy
    dim: str


@dataclass(frozen=True)
class In:  # the tensor consumes this dimension along the axis: copy and divide by the count
    dim: str


@dataclass(frozen=True)
class Gain(Out):  # a norm's gain: produces the normalized unit; RMSNorm's residual scale divides it
    pass


KEEP = None  # an axis that does not grow (vocabulary, positions)

LAYOUT = {
    "wte.weight": (KEEP, Out("hidden")),
    "wpe.weight": (KEEP, Out("hidden")),
    "ln1.weight": (Gain("hidden"),),
    "ln1.bias": (Out("hidden"),),
    "attn.qkv.weight": (Out("qkv"), In("hidden")),
    "attn.qkv.bias": (Out("qkv"),),
    "attn.proj.weight": (Out("hidden"), In("attn")),
    "attn.proj.bias": (Out("hidden"),),
    "ln2.weight": (Gain("hidden"),),
    "ln2.bias": (Out("hidden"),),
    "mlp.gate.weight": (Out("ffn"), In("hidden")),  # SwiGLU's gate: the same unit map as its up, fc
    "mlp.gate.bias": (Out("ffn"),),
    "mlp.fc.weight": (Out("ffn"), In("hidden")),
    "mlp.fc.bias": (Out("ffn"),),
    "mlp.proj.weight": (Out("hidden"), In("ffn")),
    "mlp.proj.bias": (Out("hidden"),),
    "ln_f.weight": (Gain("hidden"),),
    "ln_f.bias": (Out("hidden"),),
    "head.weight": (KEEP, In("hidden")),
}
LINEARS = ("attn.qkv.", "attn.proj.", "mlp.gate.", "mlp.fc.", "mlp.proj.")  # AKI: their new output rows
ZEROED = ("attn.proj.weight", "attn.proj.bias", "mlp.proj.weight", "mlp.proj.bias")  # depth=zero


@dataclass
class Plan:
    src: GPTConfig
    method: str
    depth: str
    maps: dict  # dimension name -> IndexMap
    layers: list  # s(k) for every target block k
    seed: int = 0
    noise: float = NOISE  # relative spread of a copy's consumer entries (0: bare FPI)
    aki_top: str = "noise"  # AKI's top block: FPI with noise, or new rows from the block below


def check_growth(src: GPTConfig, tgt: GPTConfig):
    """Growth only adds: raise UserError (one line) for anything else."""
    if tgt == src:
        raise UserError("the target size equals the source's; nothing to expand")
    if src.tie_embeddings or tgt.tie_embeddings:
        raise UserError("cannot grow a tied head exactly (wte copies, the head divides): untie it "
                        "(tie_embeddings False; export_hf.py --import unties)")
    fixed = [f"{k} {getattr(src, k)} -> {getattr(tgt, k)}"
             for k in ("head_dim", "vocab_size", "block_size", "tokenizer", "norm_eps", "norm", "mlp",
                       "pos", "rope_theta", "bias", "group_size", *ROPE_SCALING)
             if getattr(src, k) != getattr(tgt, k)]
    if fixed:
        raise UserError(f"cannot grow across families: {', '.join(fixed)} (these must stay the same)")
    shrink = [f"{k} {getattr(src, k)} -> {getattr(tgt, k)}" for k in ("n_layer", "n_head", "d_ff")
              if getattr(tgt, k) < getattr(src, k)]
    if shrink:
        raise UserError(f"expansion cannot shrink the model: {', '.join(shrink)}")


def make_plan(src: GPTConfig, tgt: GPTConfig, method: str, depth: str, seed: int, noise: float = NOISE,
              aki_top: str = "noise") -> Plan:
    for value, name, allowed in ((method, "method", METHODS), (depth, "depth", DEPTHS),
                                 (aki_top, "aki_top", AKI_TOPS)):
        if value not in allowed:
            raise UserError(f"unknown {name} {value!r}; choose one of: {', '.join(allowed)}")
    if not (0 <= noise < 1):  # 1 + noise * zeta must stay a split, not flip signs wholesale
        raise UserError(f"--noise {noise} is out of range; use 0 (bare FPI) up to below 1 (default {NOISE})")
    if not (0 <= seed < 2**63):
        raise UserError(f"--seed {seed} is out of range; use an integer from 0 to 2**63 - 1")
    check_growth(src, tgt)
    gen = torch.Generator().manual_seed(seed)
    hidden = unit_map(src.n_embd, tgt.n_embd, gen)
    heads = unit_map(src.kv_heads, tgt.kv_heads, gen)  # whole groups: a key/value head and its queries
    ffn = unit_map(src.d_ff, tgt.d_ff, gen)
    if src.norm == "rmsnorm":
        hidden = rms_scale(hidden)
    return Plan(src, method, depth, all_maps(hidden, heads, ffn, src),
                depth_map(src.n_layer, tgt.n_layer, depth), seed, noise, aki_top)


# ---------------------------------------------------------------------------------------------
# The transforms

def split_unevenly(t: torch.Tensor, axis: int, m: IndexMap, noise: float, gen: torch.Generator):
    """Multiply every entry of a copied consumer by 1 + noise * zeta, zeta standard normal and
    centred over the copies of the same source entry: the copies still sum to the source entry
    (sum_k zeta_k = 0), but differ entry by entry. One factor per whole copy would not do: it only
    scales that copy's gradient, and Adam's update ignores the scale."""
    z = torch.randn(t.shape, generator=gen).to(t.dtype)
    shape = [1] * t.dim()
    shape[axis] = -1
    sums = torch.zeros(*t.shape[:axis], int(m.g.max()) + 1, *t.shape[axis + 1:], dtype=t.dtype).index_add_(axis, m.g, z)
    mean = sums.index_select(axis, m.g) / m.count.to(t.dtype).view(shape)  # count: c(g(i)), the copies' number
    return t * (1 + noise * (z - mean))


def widen(t: torch.Tensor, axes, maps: dict, moment: int = 0, noise: float = 0.0,
          gen: torch.Generator | None = None) -> torch.Tensor:
    """Copy t along every growing axis by g. A weight (moment 0) divides by c where it consumes,
    split unevenly among the copies by `noise`; Adam's moments (1: exp_avg, 2: exp_avg_sq) divide
    by c**moment where it produces."""
    for axis, spec in enumerate(axes):
        if spec is KEEP:
            continue
        m = maps[spec.dim]
        t = t.index_select(axis, m.g.to(t.device))
        if m.scale is not None and isinstance(spec, Out):
            # RMSNorm's residual scale s: producers of the residual multiply by s, gains divide; the
            # gradients, and so the moments, the other way round (module docstring)
            power = (1 if moment == 0 else -moment) * (-1 if isinstance(spec, Gain) else 1)
            shape = [1] * t.dim()
            shape[axis] = -1
            t = t * (m.scale ** power).to(t.device, t.dtype).view(shape)
        # weights divide where they consume; gradients, and so the moments, where they produce
        if isinstance(spec, In) if moment == 0 else isinstance(spec, Out):
            shape = [1] * t.dim()
            shape[axis] = -1
            t = t / (m.count ** max(moment, 1)).to(t.device, t.dtype).view(shape)
        if moment == 0 and isinstance(spec, In) and noise > 0 and not t.is_meta:
            t = split_unevenly(t, axis, m, noise, gen)
    return t


def split_name(name: str) -> tuple[int | None, str]:
    """'blocks.3.attn.qkv.weight' -> (3, 'attn.qkv.weight'); 'wte.weight' -> (None, 'wte.weight')."""
    if not name.startswith("blocks."):
        return None, name
    _, k, local = name.split(".", 2)
    return int(k), local


def noise_generator(seed: int, name: str) -> torch.Generator:
    """Each source tensor's own noise, the same wherever it is widened (a block and its AKI donor)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % 2**63)


def aki_donor(plan: Plan, l: int) -> int | None:
    """The block whose widened rows become block l's new output rows (None: FPI's own rows)."""
    if plan.method != "aki":
        return None
    if l + 1 < plan.src.n_layer:
        return l + 1
    return l - 1 if plan.aki_top == "below" and l >= 1 else None


def grow_tensor(source: Callable[[str], torch.Tensor], name: str, plan: Plan, moment: int = 0):
    """Target tensor `name`, built from the source tensors that `source(name)` returns: the
    weights (moment 0) or one of Adam's moments (1: exp_avg, 2: exp_avg_sq)."""
    def widened(src_name: str) -> torch.Tensor:
        return widen(source(src_name), LAYOUT[split_name(src_name)[1]], plan.maps, moment, plan.noise,
                     noise_generator(plan.seed, src_name))

    k, local = split_name(name)
    if k is None:
        return widened(name)
    l = plan.layers[k]
    t = widened(f"blocks.{l}.{local}")
    # the new output rows of a Linear (its units that did not exist before), broadcast over its columns
    new = plan.maps[LAYOUT[local][0].dim].new.to(t.device).view(-1, *[1] * (t.dim() - 1))
    donor = aki_donor(plan, l)
    if donor is not None and local.startswith(LINEARS):
        t = torch.where(new, widened(f"blocks.{donor}.{local}"), t)
    if is_zero_block(plan, k) and (moment > 0 or local in ZEROED):
        t = torch.zeros_like(t)
    elif is_zero_block(plan, k) and local.startswith(LINEARS) and plan.noise > 0 and not t.is_meta:
        # the block's output projections are zero, so its consumers cannot tell copies apart: perturb
        # the copies' own rows instead (free, since nothing the block computes reaches the residual)
        z = torch.randn(t.shape, generator=noise_generator(plan.seed, name)).to(t.dtype)
        t = torch.where(new, t * (1 + plan.noise * z), t)
    return t


def is_zero_block(plan: Plan, k: int | None) -> bool:
    return plan.depth == "zero" and k is not None and k >= plan.src.n_layer


def moments_by_name(model: GPT, optimizer_state_dict: dict) -> dict:
    """{name: {"step", "exp_avg", "exp_avg_sq"}} from an AdamW state_dict in train.py's layout."""
    groups, param_groups = group_names(model), optimizer_state_dict["param_groups"]
    if [len(g["params"]) for g in param_groups] != [len(names) for names in groups]:
        raise UserError("the optimizer state does not have train.py's two parameter groups "
                        "(matrices and embeddings, then biases and gains); cannot grow it")
    state, by_name = optimizer_state_dict["state"], {}
    for group, names in zip(param_groups, groups):
        for i, name in zip(group["params"], names):
            if i not in state:
                raise UserError(f"the optimizer state has no moments for {name}; cannot grow it")
            by_name[name] = state[i]
    return by_name


def adamw_state_dict(by_name: dict, model: GPT, param_groups: list[dict]) -> dict:
    """The inverse of moments_by_name, with the hyperparameters of `param_groups`."""
    groups, flat = [], []
    for group, names in zip(param_groups, group_names(model)):
        groups.append({**group, "params": list(range(len(flat), len(flat) + len(names)))})
        flat += names
    return {"state": {i: by_name[n] for i, n in enumerate(flat)}, "param_groups": groups}


def grow_moments(moments: dict, names: list[str], plan: Plan) -> dict:
    """The grown AdamW state by name; blocks of `zero` depth start fresh (step 0, moments 0)."""
    grown = {}
    for name in names:
        k, local = split_name(name)
        step = moments[name if k is None else f"blocks.{plan.layers[k]}.{local}"]["step"]
        grown[name] = {
            # a copy per tensor: AdamW increments step in place, and a shared one would count twice
            "step": torch.zeros_like(step) if is_zero_block(plan, k) else step.clone(),
            "exp_avg": grow_tensor(lambda n: moments[n]["exp_avg"], name, plan, moment=1),
            "exp_avg_sq": grow_tensor(lambda n: moments[n]["exp_avg_sq"], name, plan, moment=2),
        }
    return grown


# ---------------------------------------------------------------------------------------------

def source_of(model_or_ckpt) -> tuple[GPTConfig, dict, dict, dict | None]:
    """(config, weights, meta, optimizer state) of a GPT module or a checkpoint dict."""
    if isinstance(model_or_ckpt, GPT):
        return model_or_ckpt.cfg, model_or_ckpt.state_dict(), {}, None
    cfg = model_or_ckpt["config"]
    cfg = cfg if isinstance(cfg, GPTConfig) else GPTConfig.from_dict(cfg)
    return cfg, model_or_ckpt["model"], model_or_ckpt.get("meta") or {}, model_or_ckpt.get("optimizer")


@torch.no_grad()
def expand(model_or_ckpt, target: GPTConfig, method: str = "aki", depth: str = "stack", seed: int = 0,
           optimizer_state: bool = False, noise: float = NOISE, aki_top: str = "noise") -> dict:
    """Grow a GPT module or checkpoint dict into `target`; returns the grown checkpoint dict
    (train=None; meta carries flops_total, lineage and the expansion with its index maps)."""
    src_cfg, weights, src_meta, src_optimizer = source_of(model_or_ckpt)
    plan = make_plan(src_cfg, target, method, depth, seed, noise, aki_top)
    with torch.device("meta"):  # shapes and names only: allocates nothing
        src_model, grown = GPT(src_cfg), GPT(target)
    if {n: t.shape for n, t in weights.items()} != {n: p.shape for n, p in src_model.named_parameters()}:
        raise UserError(f"the source weights do not match its config ({checkpoint.size_name(src_cfg)})")
    if optimizer_state and src_optimizer is None:
        raise UserError("the source has no optimizer state to grow; drop --optimizer_state")
    moments = moments_by_name(src_model, src_optimizer) if optimizer_state else None

    names = [n for n, _ in grown.named_parameters()]
    grown.load_state_dict({n: grow_tensor(weights.__getitem__, n, plan) for n in names}, assign=True)
    optimizer = None
    if optimizer_state:
        optimizer = adamw_state_dict(grow_moments(moments, names, plan), grown, src_optimizer["param_groups"])

    src_size = checkpoint.size_name(src_cfg)
    maps = {dim: plan.maps[dim].g.tolist() for dim in ("hidden", "heads", "ffn")}
    expansion = {"method": method, "depth": depth, "seed": seed, "noise": noise, "aki_top": aki_top,
                 "source": src_size, "optimizer_state": optimizer_state, "maps": {**maps, "layers": plan.layers}}
    meta = {"flops_total": src_meta.get("flops_total", 0.0),
            "lineage": [*src_meta.get("lineage", []), src_size], "expansion": expansion}
    ckpt = checkpoint.make_checkpoint(grown, meta=meta)
    ckpt["optimizer"] = optimizer
    return ckpt


# ---------------------------------------------------------------------------------------------
# Diagnostic: copies that are still twins of their source

UNITS = {"residual": "hidden", "heads": "heads", "ffn": "ffn"}  # unit -> its map in all_maps()
GROUPS = {"hidden": "residual", "qkv": "heads", "attn": "heads", "ffn": "ffn"}  # LAYOUT dim -> unit


def unit_rows(eq: torch.Tensor, dim: str, cfg: GPTConfig) -> torch.Tensor:
    """Row-level flags -> one flag per unit (a head, or a key/value head with its group of query
    heads: all of its rows, in q, k and v)."""
    if dim == "qkv":
        kv_width = cfg.kv_heads * cfg.head_dim
        return torch.stack([rows.view(cfg.kv_heads, -1).all(-1)
                            for rows in eq.split([cfg.n_embd, kv_width, kv_width])]).all(0)
    if dim == "attn":
        return eq.view(cfg.kv_heads, -1).all(-1)
    return eq


@torch.no_grad()
def twins(ckpt: dict, tol: float = 1e-6) -> list[dict]:
    """For each grown unit (residual, heads, ffn) and block (None: wte, wpe, ln_f and head), how
    many copies are still within `tol` of their source unit in EVERY tensor of that block that
    carries the unit. Such a copy is stuck: equal producers and consumers receive equal gradients
    and updates forever."""
    expansion = (ckpt.get("meta") or {}).get("expansion")
    if not expansion:
        raise UserError("the checkpoint has no expansion metadata: it was not grown by expand.py "
                        "(nor trained from a checkpoint that was)")
    cfg = ckpt["config"] if isinstance(ckpt["config"], GPTConfig) else GPTConfig.from_dict(ckpt["config"])
    units = [index_map(torch.tensor(expansion["maps"][d])) for d in ("hidden", "heads", "ffn")]
    maps = all_maps(*units, cfg)  # every index a row of the grown tensors
    stuck = {}  # (unit, block) -> flags over the new units: equal to their source in every tensor so far
    producers = {}  # the same over the tensors that produce the unit only (Out axes)
    for name, t in ckpt["model"].items():
        k, local = split_name(name)
        t = t.float()
        for axis, spec in enumerate(LAYOUT[local]):
            if spec is KEEP:
                continue
            diff = (t - t.index_select(axis, maps[spec.dim].g)).abs().transpose(0, axis)
            eq = unit_rows(diff.reshape(t.shape[axis], -1).amax(1) <= tol, spec.dim, cfg)
            unit = GROUPS[spec.dim]
            eq = eq[maps[UNITS[unit]].new]
            stuck[unit, k] = stuck.get((unit, k), True) & eq
            if isinstance(spec, Out):
                producers[unit, k] = producers.get((unit, k), True) & eq
    order = list(UNITS)
    keys = sorted(stuck, key=lambda key: (order.index(key[0]), key[1] is not None, key[1] or 0))
    return [{"dim": unit, "block": k, "copies": len(stuck[unit, k]), "twins": int(stuck[unit, k].sum()),
             # not twins, but only because their consumers differ (the noisy split before training)
             "producers_equal": int((producers[unit, k] & ~stuck[unit, k]).sum())} for unit, k in keys]


def block_label(row: dict) -> str:
    """A twins() row's block: its index, or 'embed' for wte, wpe, ln_f and head."""
    return "embed" if row["block"] is None else str(row["block"])


def twins_report(rows: list[dict]) -> str:
    """A table of twins(), and one closing line that says whether any copy is still stuck. Copies
    whose producers are still equal to their source's are counted apart: right after growth the
    noisy split has made only their consumers differ, and training has yet to separate the rest."""
    lines = [f"{'dimension':<10} {'block':>6} {'copies':>7} {'twins':>6} {'producers equal':>16}"]
    lines += [f"{r['dim']:<10} {block_label(r):>6} {r['copies']:>7} {r['twins']:>6} {r['producers_equal']:>16}"
              for r in rows]
    stuck, total = sum(r["twins"] for r in rows), sum(r["copies"] for r in rows)
    equal = {unit: sum(r["producers_equal"] for r in rows if r["dim"] == unit) for unit in UNITS}
    producers = "; producers still equal in " + ", ".join(
        f"{unit} {n} of {sum(r['copies'] for r in rows if r['dim'] == unit)}" for unit, n in equal.items() if n) + \
        " (expected before training: the split consumers separate them at the first steps)"
    lines.append((f"{stuck} of {total} copies are still twins of their source" if stuck
                  else "no twins: every copy differs from its source") + producers * any(equal.values()))
    return "\n".join(lines)


def check_finished(src: dict, path, allow: bool):
    """A stage stopped before its end (signal, --stop_at) is not a member to grow from: its successor
    would silently start from a half-trained model. The stable-phase checkpoint is mid-stage by design."""
    train = src.get("train")
    if train and not train.get("done") and "stable_phase_end" not in src["meta"] and not allow:
        raise UserError(f"{path} is a checkpoint of an unfinished stage (step {train['step']}/"
                        f"{train['max_iters']}, stopped early); finish it with train.py --resume, or grow "
                        f"from it anyway with --allow_unfinished")


def growth_settings(args) -> dict:
    """What a grown checkpoint records of how it was made (meta.expansion) and --reuse compares: the
    settings and the identity of the source's content."""
    return {"method": args.method, "depth": args.depth, "seed": args.seed, "noise": args.noise,
            "aki_top": args.aki_top, "optimizer_state": args.optimizer_state,
            "source_id": checkpoint.identity(args.src)}


def grown_already(args, target: GPTConfig) -> bool:
    """--reuse: --out exists, is readable, and was grown from --src's current content into --size
    with the same settings."""
    if not Path(args.out).exists():
        return False
    try:
        old = checkpoint.load(args.out, mmap=True, verify=False)
    except checkpoint.CheckpointError:
        return False
    made = (old["meta"] or {}).get("expansion") or {}
    return old["config"] == target and all(made.get(k) == v for k, v in growth_settings(args).items())


def n_params(weights: dict) -> int:
    return sum(t.numel() for t in weights.values())


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def main(argv=None):
    args = parse_args(argv)
    if args.inspect:
        print(twins_report(twins(checkpoint.load(args.inspect, mmap=True, optimizer=False))))
        return
    missing = [f"--{k}" for k in ("src", "size", "out") if getattr(args, k) is None]
    if missing:
        raise UserError(f"missing {', '.join(missing)} (or use --inspect CKPT); see --help")
    target = get_config(args.size)
    if Path(args.out).resolve() == Path(args.src).resolve():
        raise UserError("--out is the --src checkpoint; write the grown one to a new file")

    t0 = time.perf_counter()
    if args.reuse and grown_already(args, target):  # before the source is read: its zip directory tells
        print(f"kept {args.out}: already grown from {args.src} as it is now, with the same settings")
        return
    # mapped: only the weights (and with --optimizer_state the AdamW moments) are read, the rest never
    src = checkpoint.load(args.src, mmap=True, optimizer=args.optimizer_state)
    check_finished(src, args.src, args.allow_unfinished)
    src_size, src_params = checkpoint.size_name(src["config"]), n_params(src["model"])
    t1 = time.perf_counter()
    ckpt = expand(src, target, args.method, args.depth, args.seed, args.optimizer_state, args.noise, args.aki_top)
    del src  # the source is no longer needed: free it before serializing the target
    ckpt["meta"]["expansion"].update(growth_settings(args))  # --reuse compares them
    t2 = time.perf_counter()
    rss_expand = peak_rss_gb()
    checkpoint.save(args.out, ckpt)
    t3 = time.perf_counter()
    print(f"expanded {src_size} ({src_params:,} params) -> {args.size} ({n_params(ckpt['model']):,} "
          f"params): method {args.method}, depth {args.depth}, noise {args.noise}, seed {args.seed}, optimizer state "
          f"{'grown' if args.optimizer_state else 'none'}")
    print(f"time: load {t1 - t0:.1f} s, expand {t2 - t1:.1f} s, save {t3 - t2:.1f} s; peak RSS "
          f"{rss_expand:.2f} GB after expanding, {peak_rss_gb():.2f} GB after saving")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    run_cli(main)
