"""Layout equivalence by well-conditioned quantities (DESIGN §9, issue 10), shared by
tests/mpi/layouts.py and tests/mpi/resume.py.

What is compared. A parallel layout computes the same mathematics as one rank; in float32 the two
differ only where the layout changes the order of a sum. So the quantities compared are the ones
whose rounding error stays of the order of that reordering:

- the flat gradient of a step taken from a state both runs share: step 1 from the init, and a
  later step resumed by both from the same saved checkpoint. The gradient is recovered exactly
  from AdamW's first moment: m_s = beta1 m_{s-1} + (1 - beta1) g_s, so
  g_s = (m_s - beta1 m_{s-1}) / (1 - beta1) with m_{s-1} read from the shared checkpoint (0 at
  step 1). It is compared norm-wise per tensor;
- the loss of those steps, each evaluated at identical parameters.

State after several AdamW steps is not compared: m / sqrt(v) turns the rounding of a near-zero
gradient element into a full +-lr step, so its difference measures the BLAS kernel, not the code.

The error model. u = 2^-24 is the float32 unit roundoff. A sum of n terms computed in another
order differs by at most gamma_n * sum|terms| (gamma_n = n u / (1 - n u)); with rounding errors
modelled as independent and zero-mean, by at most lambda * sqrt(n) * u * sum|terms| except with
probability 2 exp(-lambda^2 / 2) (Higham and Mary, "A new approach to probabilistic rounding error
analysis", SIAM J. Sci. Comput. 2019). lambda = 6: a chance of 3e-8 per sum.

Which sums a layout reorders, and through how many further reductions the difference travels:

- DP and PP: every micro-batch is computed with the same weights, inputs and shapes as in the
  one-rank run, so with the same bits; only the accumulation of the gradient over the batch
  changes grouping (the reference adds the micro-batches into one buffer in order, DP adds
  per-replica partial sums in the all-reduce). That is a reordered sum over the N tokens of the
  global batch: n = N, and the difference travels no further (it is made in the gradient
  itself): c = 1.
- TP: each rank's GEMMs have other shapes (k / TP or d / TP), the row-parallel outputs and the
  column-parallel dx are sums of TP partials, and the vocabulary reductions (sum of exponentials,
  target logit) and the partial gradients are summed over TP. n = the longest of them,
  max(D, ffn, V, N). Such a difference made in the forward travels through every later reduction
  of the forward and the whole backward: per block 9 (two RMSNorms, the q/k/v GEMM, the scores,
  the softmax sum, P V, the o GEMM, gate/up, down), plus the LM head and the cross-entropy,
  forward and backward: c = 2 (9 L + 2). Independent roundings add in quadrature.

  eps = lambda * sqrt(c * n) * u        (relative to the magnitude of the terms)

The magnitude of the terms. A rounding error is relative to the terms that are summed, not to
their sum, which can cancel: BitFit's k_proj bias has an exactly zero gradient (a key bias shifts
all of a query's scores equally, which softmax ignores), and LoRA's A at a later step is a sum of
terms proportional to B = +-lr that largely cancel. Every trainable gradient is built from the same
activations and output gradients, whose scale the whole gradient's RMS element measures. So a
tensor of n_T elements is held to

  ||g_T - g_T,ref|| <= eps * max(||g_T,ref||, ||g_ref|| sqrt(n_T / n_all)) + recovery_T

recovery_T is the error of reading g back from f32 moments: m_s and m_{s-1} are stored rounded (half
an ulp each) and m_s itself was rounded once or twice in f32, so the recovered g carries up to
4 u (||m_s|| + beta1 ||m_{s-1}||) / (1 - beta1) in norm, for each of the two runs.

The loss is a mean over the batch's tokens of terms made in the forward only: c_fwd = 9 L + 2,
and the same n; its bound is relative to the loss itself (cross-entropy terms are positive, so
there is no cancellation).

Every bound is below 1e-3 relative, so a tensor changed by 1e-3, a sign flip in one shard or one
sequence of the wrong data fails it (self_test, and the data check of layouts.py)."""

import math

import h5py
import numpy as np

U = 2.0 ** -24
LAMBDA = 6.0
BETA1 = 0.9
RECOVERY_ULPS = 4.0
REDUCTIONS_PER_BLOCK = 9


def model_config(ckpt):
    """The model config a checkpoint was written for (root attributes)."""
    with h5py.File(ckpt, "r") as f:
        return {k: int(f.attrs[k]) for k in ("dim", "ffn_dim", "vocab_size", "n_layers")}


def layout_eps(cfg, tp, tokens, forward_only=False):
    """eps of the module docstring for a layout whose global batch holds `tokens` tokens:
    relative to the magnitude of the terms."""
    if tp > 1:
        n = max(cfg["dim"], cfg["ffn_dim"], cfg["vocab_size"], tokens)
        c = REDUCTIONS_PER_BLOCK * cfg["n_layers"] + 2
        c = c if forward_only else 2 * c
    else:  # DP and PP reorder only the accumulation over the batch's tokens
        n, c = tokens, 1
    return LAMBDA * math.sqrt(c * n) * U


def moments(ckpt):
    """adam_m of a checkpoint as float64 arrays by tensor name."""
    with h5py.File(ckpt, "r") as f:
        return {k: f["adam_m"][k][...].astype(np.float64) for k in f["adam_m"]}


def gradient(ckpt, prev=None):
    """(g, recovery): the gradient of the step that wrote ckpt, from its adam_m and the adam_m of
    the checkpoint it started from (prev; None = the init, m = 0), and each tensor's recovery
    error bound in norm."""
    m = moments(ckpt)
    m0 = moments(prev) if prev else {k: np.zeros_like(v) for k, v in m.items()}
    if sorted(m) != sorted(m0):
        raise ValueError("%s and %s hold different tensors" % (ckpt, prev))
    g, rec = {}, {}
    for k in m:
        g[k] = (m[k] - BETA1 * m0[k]) / (1 - BETA1)
        rec[k] = RECOVERY_ULPS * U * (np.linalg.norm(m[k]) + BETA1 * np.linalg.norm(m0[k])) / (1 - BETA1)
    return g, rec


def scales(g_ref):
    """Each tensor's magnitude scale: max(||g_T,ref||, ||g_ref|| sqrt(n_T / n_all)) (module
    docstring), and whether the tensor is held to its own norm (the first term is the larger)."""
    n_all = sum(v.size for v in g_ref.values())
    norm_all = math.sqrt(sum(float(np.sum(v * v)) for v in g_ref.values()))
    out = {}
    for k, v in g_ref.items():
        own, floor = np.linalg.norm(v), norm_all * math.sqrt(v.size / max(n_all, 1))
        out[k] = (max(own, floor), own >= floor)
    return out


def compare_gradients(ref, par, eps):
    """ref and par are (g, recovery) pairs. Returns (worst, name, table): worst is the largest
    ||g_T - g_T,ref|| / bound_T over the tensors (<= 1 passes; inf when the tensors or shapes
    differ), name the tensor it belongs to."""
    (g_ref, r_ref), (g_par, r_par) = ref, par
    if sorted(g_ref) != sorted(g_par) or any(g_ref[k].shape != g_par[k].shape for k in g_ref):
        return math.inf, "(different tensors or shapes)", {}
    table = {}
    for k, (scale, _) in scales(g_ref).items():
        bound = eps * scale + r_ref[k] + r_par[k]
        diff = np.linalg.norm(g_par[k] - g_ref[k])
        table[k] = diff / bound if bound > 0 else (0.0 if diff == 0 else math.inf)
    if not table:
        return 0.0, "", table
    name = max(table, key=table.get)
    return table[name], name, table


def compare_losses(ref, par, eps):
    """Largest |l - l_ref| / (eps |l_ref|) over paired losses (<= 1 passes; inf on a length
    mismatch or a non-finite loss)."""
    if len(ref) != len(par) or not ref:
        return math.inf
    worst = 0.0
    for x, y in zip(ref, par):
        if x is None or y is None or not (math.isfinite(x) and math.isfinite(y)):
            return math.inf
        worst = max(worst, abs(x - y) / (eps * abs(x)))
    return worst


def self_test(ref, eps, shard_rows=2):
    """The comparison must fail for a deliberately wrong gradient: each tensor changed by 1e-3
    relative (those held to their own norm, which is every tensor whose gradient does not cancel),
    and the sign of the last of `shard_rows` row blocks (a TP shard) of the largest tensor flipped.
    Returns a list of the perturbations the comparison failed to catch (empty = good) and the
    number of perturbations tried."""
    g_ref, r_ref = ref
    missed, tried = [], 0
    for k, (_, own_norm) in scales(g_ref).items():
        if not own_norm:
            continue  # held to the whole gradient's scale: 1e-3 of its own norm is below that
        wrong = dict(g_ref)
        wrong[k] = g_ref[k] * (1 + 1e-3)
        tried += 1
        if compare_gradients(ref, (wrong, r_ref), eps)[0] <= 1:
            missed.append("%s x (1 + 1e-3)" % k)
    if g_ref:
        k = max(g_ref, key=lambda n: np.linalg.norm(g_ref[n]))
        v = g_ref[k]
        if np.linalg.norm(v) > 0 and v.shape[0] >= shard_rows:
            wrong = dict(g_ref)
            flipped = v.copy()
            flipped[v.shape[0] - v.shape[0] // shard_rows:] *= -1
            wrong[k] = flipped
            tried += 1
            if compare_gradients(ref, (wrong, r_ref), eps)[0] <= 1:
                missed.append("%s with its last shard's sign flipped" % k)
    return missed, tried
