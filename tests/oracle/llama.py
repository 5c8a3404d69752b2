"""A small, plain PyTorch LLaMA used as the oracle for onelora's numerics.

It follows Hugging Face's LlamaForCausalLM exactly as DESIGN.md section 6 describes it, written out
by hand so that the test does not depend on `transformers`:

  * RMSNorm      y = x * rsqrt(mean(x^2) + eps) * w
  * RoPE         HF convention: rotate_half over the two halves of each head,
                 inv_freq = theta^(-arange(0, hd, 2) / hd), positions 0..T-1 in each sequence
  * attention    causal, softmax scale 1/sqrt(hd), GQA with repeat_interleave
                 (kv head j serves query heads j*H/K .. (j+1)*H/K - 1)
  * MLP          down(silu(gate x) * up x)
  * residuals, final norm, untied LM head, loss = mean cross-entropy over every target token

The reference runs in float64 so that its own rounding is negligible next to onelora's float32.

Trainable state (DESIGN.md sections 6 and 7), named as onelora's checkpoint names it. `--method` is a
comma list of parts:
  * "full":  every weight of the model file, under its model-file name (alone)
  * "none":  nothing (alone)
  * "norms": the RMSNorm weights, under their model-file names
  * adapters on every targeted frozen linear y = W x (W [d, k]), one small nn.Module each below:
    1lora, 1lora-random, lora, dora, vera, mora, mora6, bitfit; trainable tensors are
    `<module>.<param>`, e.g. `model.layers.0.self_attn.q_proj.lora_A`.
Every trainable tensor has a deterministic init (`Llama.init[name]`, a numpy array) or, for LoRA's A,
a random one (`Llama.init[name] is None`): its value must then be given with `set_params`, e.g. from a
checkpoint. Frozen tensors that a method generates (VeRA's shared A and B, 1lora-random's v) are
passed in `frozen` (the checkpoint's `frozen` group) and must be there.
"""

import h5py
import numpy as np
import torch
import torch.nn.functional as F

# Target short names -> HF module path inside a decoder layer.
MODULES = {
    "q": "self_attn.q_proj",
    "k": "self_attn.k_proj",
    "v": "self_attn.v_proj",
    "o": "self_attn.o_proj",
    "gate": "mlp.gate_proj",
    "up": "mlp.up_proj",
    "down": "mlp.down_proj",
}
TARGETS_ALL = ("q", "k", "v", "o", "gate", "up", "down")
TARGETS_ATTN = ("q", "k", "v", "o")

CONFIG_INT_KEYS = ("dim", "n_layers", "n_heads", "n_kv_heads", "ffn_dim", "vocab_size", "max_seq_len")
CONFIG_FLOAT_KEYS = ("norm_eps", "rope_theta")


def parse_targets(spec):
    """'all' | 'attn' | comma list of q,k,v,o,gate,up,down -> tuple of short names."""
    if spec == "all":
        return TARGETS_ALL
    if spec == "attn":
        return TARGETS_ATTN
    names = tuple(t.strip() for t in spec.split(",") if t.strip())
    for t in names:
        if t not in MODULES:
            raise ValueError("unknown target %r" % t)
    return names


def attr_str(v):
    """HDF5 string attributes come back as str, bytes or a 0-d/1-element array depending on how they were written."""
    if isinstance(v, np.ndarray):
        v = v.reshape(-1)[0] if v.size else ""
    if isinstance(v, (bytes, np.bytes_)):
        v = v.decode("utf-8")
    return str(v)


class Config:
    def __init__(self, attrs):
        for k in CONFIG_INT_KEYS:
            setattr(self, k, int(np.asarray(attrs[k]).reshape(-1)[0]))
        for k in CONFIG_FLOAT_KEYS:
            setattr(self, k, float(np.asarray(attrs[k]).reshape(-1)[0]))
        self.head_dim = self.dim // self.n_heads

    def __repr__(self):
        keys = CONFIG_INT_KEYS + CONFIG_FLOAT_KEYS
        return "Config(" + ", ".join("%s=%s" % (k, getattr(self, k)) for k in keys) + ")"


def weight_names(cfg):
    """Every dataset a model file must hold, with its shape."""
    D, F_, V, hd, K = cfg.dim, cfg.ffn_dim, cfg.vocab_size, cfg.head_dim, cfg.n_kv_heads
    out = {"model.embed_tokens.weight": (V, D)}
    for i in range(cfg.n_layers):
        p = "model.layers.%d." % i
        out[p + "input_layernorm.weight"] = (D,)
        out[p + "post_attention_layernorm.weight"] = (D,)
        out[p + "self_attn.q_proj.weight"] = (D, D)
        out[p + "self_attn.k_proj.weight"] = (K * hd, D)
        out[p + "self_attn.v_proj.weight"] = (K * hd, D)
        out[p + "self_attn.o_proj.weight"] = (D, D)
        out[p + "mlp.gate_proj.weight"] = (F_, D)
        out[p + "mlp.up_proj.weight"] = (F_, D)
        out[p + "mlp.down_proj.weight"] = (D, F_)
    out["model.norm.weight"] = (D,)
    out["lm_head.weight"] = (V, D)
    return out


def load_model(path):
    """Reads a onelora model file -> (Config, {name: float64 numpy array})."""
    with h5py.File(path, "r") as f:
        arch = attr_str(f.attrs["architecture"])
        if arch != "llama":
            raise ValueError("%s: architecture is %r, expected 'llama'" % (path, arch))
        cfg = Config(f.attrs)
        weights = {}
        for name, shape in weight_names(cfg).items():
            a = f[name][()]
            if tuple(a.shape) != shape:
                raise ValueError("%s: %s has shape %s, expected %s" % (path, name, a.shape, shape))
            weights[name] = a.astype(np.float64)
    return cfg, weights


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


# ---- PEFT methods: one small module per adapter (DESIGN.md section 7) ------------------------------
# Each adapter sits on one frozen linear layer y = W x, W [d = out, k = in], and maps (x, y) -> y'.
# It declares its trainable tensors with `param(suffix, init)`; the model names them `<module>.<suffix>`.


class AdapterContext:
    """What adapters share: rank, alpha, the frozen tensors the method generated, the dtype, and the
    largest in/out among the adapted projections (VeRA slices its shared matrices from those)."""

    def __init__(self, rank, alpha, frozen, dtype, k_max, d_max):
        self.rank, self.alpha, self.dtype, self.k_max, self.d_max = rank, alpha, dtype, k_max, d_max
        self.frozen = frozen or {}
        self.used = {}  # frozen name -> shape, every frozen tensor an adapter read

    def frozen_tensor(self, name, shape):
        if name not in self.frozen:
            raise ValueError("frozen tensor %s %s is missing (the checkpoint's `frozen` group holds %s)"
                             % (name, list(shape), sorted(self.frozen) or "nothing"))
        a = np.asarray(self.frozen[name])
        if tuple(a.shape) != tuple(shape):
            raise ValueError("frozen tensor %s has shape %s, expected %s" % (name, list(a.shape), list(shape)))
        self.used[name] = tuple(shape)
        return torch.tensor(a, dtype=self.dtype)


class Adapter(torch.nn.Module):
    def __init__(self, W, ctx):
        super().__init__()
        self.W, self.ctx = W, ctx  # W: the frozen (d, k) weight
        self.d, self.k = W.shape
        self.init = {}  # suffix -> numpy init, or None when it is random

    def param(self, suffix, init, shape=None):
        """Declares trainable tensor self.<suffix>; init None means random (NaN until set_params gives it)."""
        shape = tuple(shape if init is None else np.shape(init))
        t = torch.full(shape, float("nan"), dtype=self.ctx.dtype) if init is None \
            else torch.tensor(init, dtype=self.ctx.dtype)
        p = torch.nn.Parameter(t)
        setattr(self, suffix, p)  # registers it under its checkpoint suffix: forward reads self.<suffix>
        self.init[suffix] = None if init is None else np.asarray(init, dtype=np.float64)
        return p


class OneLoRA(Adapter):
    """1lora: y += b * sum_i x_i, b [d] = 0."""

    def __init__(self, W, ctx, module):
        super().__init__(W, ctx)
        self.param("onelora_b", np.zeros(self.d))

    def forward(self, x, y):
        return y + self.onelora_b * x.sum(dim=-1, keepdim=True)


class OneLoRARandom(Adapter):
    """1lora-random: y += b * (v . x), v [k] frozen random (frozen `<module>.onelora_v`), b [d] = 0."""

    def __init__(self, W, ctx, module):
        super().__init__(W, ctx)
        self.v = ctx.frozen_tensor(module + ".onelora_v", (self.k,))
        self.param("onelora_b", np.zeros(self.d))

    def forward(self, x, y):
        return y + self.onelora_b * (x @ self.v).unsqueeze(-1)


class LoRA(Adapter):
    """lora: y += s B (A x), s = alpha / r; A [r, k] ~ U(+-1/sqrt(k)) (random), B [d, r] = 0."""

    def __init__(self, W, ctx, module):
        super().__init__(W, ctx)
        self.s = ctx.alpha / ctx.rank
        self.param("lora_A", None, (ctx.rank, self.k))
        self.param("lora_B", np.zeros((self.d, ctx.rank)))

    def delta(self, x):
        return self.s * ((x @ self.lora_A.t()) @ self.lora_B.t())

    def forward(self, x, y):
        return y + self.delta(x)


class DoRA(LoRA):
    """dora: y = (m / n) * (W x + s B A x), n_i = ||W_i + s (B A)_i|| over k, detached from the graph;
    LoRA's A and B, plus m [d] = ||W||_row."""

    def __init__(self, W, ctx, module):
        super().__init__(W, ctx, module)
        self.param("dora_m", np.linalg.norm(W.detach().numpy().astype(np.float64), axis=1))

    def forward(self, x, y):
        with torch.no_grad():
            n = (self.W + self.s * (self.lora_B @ self.lora_A)).norm(dim=1)
        return (self.dora_m / n) * (y + self.delta(x))


class VeRA(Adapter):
    """vera: y += lambda_b * (B[:d, :] (lambda_d * (A[:, :k] x))); A [r, k_max] and B [d_max, r] frozen,
    shared by every adapted layer (frozen `vera_A`, `vera_B`); lambda_b [d] = 0, lambda_d [r] = 0.1."""

    def __init__(self, W, ctx, module):
        super().__init__(W, ctx)
        r = ctx.rank
        self.A = ctx.frozen_tensor("vera_A", (r, ctx.k_max))[:, :self.k]
        self.B = ctx.frozen_tensor("vera_B", (ctx.d_max, r))[:self.d, :]
        self.param("vera_lambda_b", np.zeros(self.d))
        self.param("vera_lambda_d", np.full(r, 0.1))

    def forward(self, x, y):
        return y + self.vera_lambda_b * (((x @ self.A.t()) * self.vera_lambda_d) @ self.B.t())


def mora_rhat(k, d, rank):
    """MoRA's square size: floor(sqrt((k + d) r) + 1/2)."""
    return int(np.floor(np.sqrt((k + d) * rank) + 0.5))


def mora_groups(x, rhat):
    """x (..., k) padded cyclically to a multiple of rhat, cat(x, x[:pad]) -> (..., G, rhat)."""
    pad = (-x.shape[-1]) % rhat
    if pad:
        x = torch.cat((x, x[..., :pad]), dim=-1)
    return x.reshape(*x.shape[:-1], -1, rhat)


def tile_to(o, d):
    """o (..., n) repeated end to end until it has at least d entries, then truncated to d."""
    reps = -(-d // o.shape[-1])
    return o.repeat(*([1] * (o.dim() - 1)), reps)[..., :d]


class MoRA(Adapter):
    """mora (type 1): c = sum of the rhat-groups of the cyclically padded x; y += tile(M c)[:d]; M = 0."""

    def __init__(self, W, ctx, module):
        super().__init__(W, ctx)
        self.rhat = mora_rhat(self.k, self.d, ctx.rank)
        self.param("mora_M", np.zeros((self.rhat, self.rhat)))

    def forward(self, x, y):
        c = mora_groups(x, self.rhat).sum(dim=-2)  # (..., rhat)
        return y + tile_to(c @ self.mora_M.t(), self.d)


class MoRA6(Adapter):
    """mora6 (type 6): rhat rounded down to even; group g of the padded x is rotated by RoPE at
    position g (HF rotate_half over rhat dims, base 10000), o_g = M rot_g(x_g); the o_g concatenated
    (length k_pad) and tiled/truncated to d; M = 0."""

    def __init__(self, W, ctx, module):
        super().__init__(W, ctx)
        rhat = mora_rhat(self.k, self.d, ctx.rank)
        self.rhat = rhat - rhat % 2
        self.param("mora_M", np.zeros((self.rhat, self.rhat)))

    def forward(self, x, y):
        g = mora_groups(x, self.rhat)  # (..., G, rhat)
        G, dt = g.shape[-2], self.ctx.dtype
        inv_freq = 1.0 / (10000.0 ** (torch.arange(0, self.rhat, 2, dtype=dt) / self.rhat))
        freqs = torch.outer(torch.arange(G, dtype=dt), inv_freq)  # (G, rhat/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (G, rhat)
        g = g * emb.cos() + rotate_half(g) * emb.sin()
        o = (g @ self.mora_M.t()).reshape(*x.shape[:-1], -1)  # (..., G * rhat)
        return y + tile_to(o, self.d)


class BitFit(Adapter):
    """bitfit: y += beta, beta [d] = 0 (checkpoint name `<module>.bias`)."""

    def __init__(self, W, ctx, module):
        super().__init__(W, ctx)
        self.param("bias", np.zeros(self.d))

    def forward(self, x, y):
        return y + self.bias


ADAPTERS = {"1lora": OneLoRA, "1lora-random": OneLoRARandom, "lora": LoRA, "dora": DoRA, "vera": VeRA,
            "mora": MoRA, "mora6": MoRA6, "bitfit": BitFit}


def parse_method(spec):
    """'1lora,norms' etc. -> (full, norms, adapter names in order); 'none' -> (False, False, ())."""
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    known = ("none", "full", "norms") + tuple(ADAPTERS)
    for p in parts:
        if p not in known:
            raise ValueError("unknown method %r (known: %s)" % (p, ", ".join(known)))
    if not parts or len(set(parts)) != len(parts):
        raise ValueError("bad method list %r" % spec)
    if ("none" in parts or "full" in parts) and len(parts) > 1:
        raise ValueError("'none' and 'full' cannot be combined (%r)" % spec)
    return "full" in parts, "norms" in parts, tuple(p for p in parts if p in ADAPTERS)


def is_norm(name):
    return name.endswith("layernorm.weight") or name == "model.norm.weight"


class Llama(torch.nn.Module):
    def __init__(self, cfg, weights, method="1lora", targets=TARGETS_ALL, rank=2, alpha=4.0, frozen=None,
                 dtype=torch.float64):
        super().__init__()
        full, norms, adapters = parse_method(method)
        self.cfg, self.method, self.targets, self.dtype = cfg, method, tuple(targets), dtype
        self.trainable = {}  # checkpoint name -> nn.Parameter
        self.init = {}  # checkpoint name -> numpy init, None when random (see set_params)
        self.w = {}  # model-file name -> tensor (a Parameter when trainable)
        for name, a in weights.items():
            t = torch.tensor(a, dtype=dtype)
            if full or (norms and is_norm(name)):
                t = torch.nn.Parameter(t)
                self._add_trainable(name, t, a)
            self.w[name] = t
        self.adapters = {}  # model-file weight name -> [Adapter]
        mods = ["model.layers.%d.%s" % (i, MODULES[t]) for i in range(cfg.n_layers) for t in self.targets]
        self.ctx = AdapterContext(rank, alpha, frozen, dtype,
                                  k_max=max(weights[m + ".weight"].shape[1] for m in mods) if mods else 0,
                                  d_max=max(weights[m + ".weight"].shape[0] for m in mods) if mods else 0)
        for kind in adapters:
            for mod in mods:
                a = ADAPTERS[kind](self.w[mod + ".weight"], self.ctx, mod)
                self.add_module((mod + "." + kind).replace(".", "__").replace("-", "_"), a)
                self.adapters.setdefault(mod + ".weight", []).append(a)
                for suffix, p in a.named_parameters(recurse=False):
                    self._add_trainable(mod + "." + suffix, p, a.init[suffix])

    def _add_trainable(self, ckpt_name, p, init):
        if ckpt_name in self.trainable:
            raise ValueError("two trainable tensors named %s" % ckpt_name)
        # nn.Module parameter names may not contain '.', so register under a mangled name and keep
        # the checkpoint name in self.trainable.
        self.register_parameter(ckpt_name.replace(".", "__"), p)
        self.trainable[ckpt_name] = p
        self.init[ckpt_name] = init

    def set_params(self, values):
        """Overwrites trainable tensors: {checkpoint name: array of the same shape}."""
        with torch.no_grad():
            for name, a in values.items():
                p = self.trainable[name]
                if tuple(np.shape(a)) != tuple(p.shape):
                    raise ValueError("%s: shape %s, expected %s" % (name, np.shape(a), tuple(p.shape)))
                p.copy_(torch.tensor(np.asarray(a, dtype=np.float64), dtype=self.dtype))

    # ---- building blocks ------------------------------------------------------------------
    def linear(self, x, wname):
        """y = W x, then every adapter the layer carries. x: (..., in)."""
        y = x @ self.w[wname].t()
        for a in self.adapters.get(wname, ()):
            y = a(x, y)
        return y
    def rmsnorm(self, x, wname):
        return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + self.cfg.norm_eps) * self.w[wname]

    def rope(self, T):
        hd = self.cfg.head_dim
        inv_freq = 1.0 / (self.cfg.rope_theta ** (torch.arange(0, hd, 2, dtype=self.dtype) / hd))
        pos = torch.arange(T, dtype=self.dtype)
        freqs = torch.outer(pos, inv_freq)  # (T, hd/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (T, hd)
        return emb.cos(), emb.sin()

    def attention(self, x, i, cos, sin):
        c = self.cfg
        B, T, D = x.shape
        H, K, hd = c.n_heads, c.n_kv_heads, c.head_dim
        p = "model.layers.%d.self_attn." % i
        q = self.linear(x, p + "q_proj.weight").view(B, T, H, hd).transpose(1, 2)  # (B, H, T, hd)
        k = self.linear(x, p + "k_proj.weight").view(B, T, K, hd).transpose(1, 2)  # (B, K, T, hd)
        v = self.linear(x, p + "v_proj.weight").view(B, T, K, hd).transpose(1, 2)  # (B, K, T, hd)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if K != H:  # GQA: kv head j serves query heads j*H/K .. (j+1)*H/K-1
            k = k.repeat_interleave(H // K, dim=1)
            v = v.repeat_interleave(H // K, dim=1)
        scores = (q @ k.transpose(-1, -2)) / (hd ** 0.5)  # (B, H, T, T)
        causal = torch.ones(T, T, dtype=torch.bool).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
        att = torch.softmax(scores, dim=-1) @ v  # (B, H, T, hd)
        att = att.transpose(1, 2).reshape(B, T, D)
        return self.linear(att, p + "o_proj.weight")

    def mlp(self, x, i):
        p = "model.layers.%d.mlp." % i
        return self.linear(F.silu(self.linear(x, p + "gate_proj.weight")) * self.linear(x, p + "up_proj.weight"),
                           p + "down_proj.weight")

    # ---- model ------------------------------------------------------------------------------
    def forward(self, tokens):
        """tokens: (B, T) int64 -> logits (B, T, V)."""
        T = tokens.shape[1]
        cos, sin = self.rope(T)
        h = self.w["model.embed_tokens.weight"][tokens]  # (B, T, D)
        for i in range(self.cfg.n_layers):
            p = "model.layers.%d." % i
            h = h + self.attention(self.rmsnorm(h, p + "input_layernorm.weight"), i, cos, sin)
            h = h + self.mlp(self.rmsnorm(h, p + "post_attention_layernorm.weight"), i)
        h = self.rmsnorm(h, "model.norm.weight")
        return h @ self.w["lm_head.weight"].t()

    def loss(self, tokens, targets):
        """Mean cross-entropy over every target token of the batch."""
        logits = self.forward(tokens)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
