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

Trainable state, named as onelora's checkpoint names it (DESIGN.md section 6):
  * method "1lora": one vector b per adapted linear layer, `<module>.onelora_b` [out], zero-initialised;
                    the layer computes y = W x + b * sum_i x_i
  * method "full":  every weight of the model file, under its model-file name
  * method "none":  nothing
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


class Llama(torch.nn.Module):
    def __init__(self, cfg, weights, method="1lora", targets=TARGETS_ALL, dtype=torch.float64):
        super().__init__()
        if method not in ("1lora", "full", "none"):
            raise ValueError("the oracle implements methods 1lora, full and none, not %r" % method)
        self.cfg, self.method, self.targets, self.dtype = cfg, method, tuple(targets), dtype
        self.trainable = {}  # checkpoint name -> nn.Parameter
        self.w = {}  # model-file name -> tensor (a Parameter when method == "full")
        for name, a in weights.items():
            t = torch.tensor(a, dtype=dtype)
            if method == "full":
                t = torch.nn.Parameter(t)
                self._add_trainable(name, t)
            self.w[name] = t
        self.b = {}  # model-file weight name -> 1LoRA vector b
        if method == "1lora":
            for i in range(cfg.n_layers):
                for t in self.targets:
                    mod = "model.layers.%d.%s" % (i, MODULES[t])
                    out = weights[mod + ".weight"].shape[0]
                    b = torch.nn.Parameter(torch.zeros(out, dtype=dtype))  # b = 0 at init (DESIGN.md s.7)
                    self._add_trainable(mod + ".onelora_b", b)
                    self.b[mod + ".weight"] = b

    def _add_trainable(self, ckpt_name, p):
        # nn.Module parameter names may not contain '.', so register under a mangled name and keep
        # the checkpoint name in self.trainable.
        self.register_parameter(ckpt_name.replace(".", "__"), p)
        self.trainable[ckpt_name] = p

    # ---- building blocks ------------------------------------------------------------------
    def linear(self, x, wname):
        """y = W x (+ b * sum_i x_i when the layer carries a 1LoRA adapter). x: (..., in)."""
        y = x @ self.w[wname].t()
        b = self.b.get(wname)
        if b is not None:
            y = y + b * x.sum(dim=-1, keepdim=True)
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
