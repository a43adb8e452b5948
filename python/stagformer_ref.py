"""Independent float64 numpy reference of the StagFormer model contract (docs/MODEL.md).

This module deliberately favours clarity over speed: every quantity is computed over the
whole sequence with explicit masks, in float64, so that it can serve as a check on the
Rust implementations (CPU reference and CUDA kernels).

Contents
--------
* ``Config``: the fields of ``config.json`` with their defaults.
* building blocks: ``rmsnorm``, ``rope``, ``attention``, ``swiglu``.
* ``run_section`` / ``forward`` / ``recurrent``: the model.
* ``load_checkpoint``: reads ``config.json`` + ``model.safetensors`` (f32 / f16 / bf16, single
  file or sharded with ``model.safetensors.index.json``).
* ``write_random_checkpoint``: writes a random checkpoint for tests (f32 or bf16, optionally
  sharded).

Command line (handy for manual comparisons)::

    python python/stagformer_ref.py score --model DIR --tokens 1,2,3 \
        --mode forward|recurrent [--prompt-len P] [--out FILE.safetensors]
    python python/stagformer_ref.py random --config CONFIG.json --seed 0 --out DIR \
        [--dtype f32|bf16] [--shards N]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import struct
import sys
from typing import Dict, List, Optional, Sequence

import numpy as np

# ----------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------


@dataclasses.dataclass
class Config:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    # {"rope_type": ..., scaling fields}: the 4.x `rope_scaling` or the 5.x `rope_parameters`.
    rope_scaling: Optional[dict] = None
    # Mistral's `sliding_window` over the self-attention (None: every earlier key).
    sliding_window: Optional[int] = None
    max_position_embeddings: Optional[int] = None
    tie_word_embeddings: bool = False
    stag_sections: int = 1
    stag_shared_weights: bool = False
    stag_cross_window: Optional[int] = None
    stag_output_mix: bool = False

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        heads = int(d["num_attention_heads"])
        hidden = int(d["hidden_size"])
        kv = d.get("num_key_value_heads")
        kv = heads if kv is None else int(kv)
        head_dim = d.get("head_dim")
        if head_dim is None:
            if hidden % heads != 0:
                raise ValueError("hidden_size must be divisible by num_attention_heads "
                                 "when head_dim is not given")
            head_dim = hidden // heads
        window = d.get("stag_cross_window")
        eps = d.get("rms_norm_eps")
        # transformers 5 nests θ and the scaling in `rope_parameters`; 4.x keeps `rope_theta`
        # and `rope_scaling` at the top level.
        params = d.get("rope_parameters") or {}
        theta = params.get("rope_theta", d.get("rope_theta"))
        scaling = dict(params or d.get("rope_scaling") or {})
        if "rope_type" not in scaling and "type" in scaling:
            scaling["rope_type"] = scaling["type"]
        scaling.pop("type", None)
        scaling.pop("rope_theta", None)
        if scaling.get("rope_type", "default") == "default":
            scaling = None
        # MistralConfig's default window is 4096; Llama has none.
        if d.get("model_type") == "mistral" and "sliding_window" not in d:
            sliding = 4096
        else:
            sliding = d.get("sliding_window")
        cfg = cls(
            vocab_size=int(d["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(d["intermediate_size"]),
            num_hidden_layers=int(d["num_hidden_layers"]),
            num_attention_heads=heads,
            num_key_value_heads=kv,
            head_dim=int(head_dim),
            rms_norm_eps=1e-6 if eps is None else float(eps),
            rope_theta=10000.0 if theta is None else float(theta),
            rope_scaling=scaling,
            sliding_window=None if sliding is None else int(sliding),
            max_position_embeddings=d.get("max_position_embeddings"),
            tie_word_embeddings=bool(d.get("tie_word_embeddings") or False),
            stag_sections=1 if d.get("stag_sections") is None else int(d["stag_sections"]),
            stag_shared_weights=bool(d.get("stag_shared_weights") or False),
            stag_cross_window=None if window is None else int(window),
            stag_output_mix=bool(d.get("stag_output_mix") or False),
        )
        cfg.validate()
        return cfg

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        # transformers' Llama has no sliding window; Mistral is Llama with one.
        mistral = self.sliding_window is not None
        d["architectures"] = ["MistralForCausalLM" if mistral else "LlamaForCausalLM"]
        d["model_type"] = "mistral" if mistral else "llama"
        d["hidden_act"] = "silu"
        if d["max_position_embeddings"] is None:
            d["max_position_embeddings"] = 2048
        return d

    def validate(self) -> None:
        p = self.stag_sections
        if p < 1:
            raise ValueError("stag_sections must be >= 1")
        if self.num_attention_heads % self.num_key_value_heads != 0:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")
        if self.head_dim % 2 != 0:
            raise ValueError("head_dim must be even (RoPE)")
        if not self.stag_shared_weights and self.num_hidden_layers % p != 0:
            raise ValueError("num_hidden_layers must be divisible by stag_sections")
        if self.stag_cross_window is not None and self.stag_cross_window < 1:
            raise ValueError("stag_cross_window must be null or >= 1")
        if self.sliding_window is not None and self.sliding_window < 1:
            raise ValueError("sliding_window must be null or >= 1")
        if self.rope_scaling is not None and self.rope_scaling["rope_type"] not in (
                "linear", "llama3", "dynamic"):
            raise ValueError(f"rope_type {self.rope_scaling['rope_type']} is not implemented")

    @property
    def layers_per_section(self) -> int:
        if self.stag_shared_weights:
            return self.num_hidden_layers
        return self.num_hidden_layers // self.stag_sections

    def layer_index(self, section: int, j: int) -> int:
        """Index l of the self-attention/MLP weights used by layer j of a section."""
        if self.stag_shared_weights:
            return j
        return section * self.layers_per_section + j


def tensor_shapes(cfg: Config) -> Dict[str, tuple]:
    """Every tensor a checkpoint for ``cfg`` holds, with its shape."""
    D, F, V = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    q_out = cfg.num_attention_heads * cfg.head_dim
    kv_out = cfg.num_key_value_heads * cfg.head_dim
    shapes: Dict[str, tuple] = {
        "model.embed_tokens.weight": (V, D),
        "model.norm.weight": (D,),
    }
    if not cfg.tie_word_embeddings:
        shapes["lm_head.weight"] = (V, D)
    n_layer_weights = cfg.num_hidden_layers
    for l in range(n_layer_weights):
        pre = f"model.layers.{l}."
        shapes[pre + "input_layernorm.weight"] = (D,)
        shapes[pre + "post_attention_layernorm.weight"] = (D,)
        shapes[pre + "self_attn.q_proj.weight"] = (q_out, D)
        shapes[pre + "self_attn.k_proj.weight"] = (kv_out, D)
        shapes[pre + "self_attn.v_proj.weight"] = (kv_out, D)
        shapes[pre + "self_attn.o_proj.weight"] = (D, q_out)
        shapes[pre + "mlp.gate_proj.weight"] = (F, D)
        shapes[pre + "mlp.up_proj.weight"] = (F, D)
        shapes[pre + "mlp.down_proj.weight"] = (D, F)
    p = cfg.stag_sections
    for s in range(1, p):
        for j in range(cfg.layers_per_section):
            pre = f"model.cross_layers.{s}.{j}."
            shapes[pre + "cross_attn_layernorm.weight"] = (D,)
            shapes[pre + "cross_attn.q_proj.weight"] = (q_out, D)
            shapes[pre + "cross_attn.k_proj.weight"] = (kv_out, D)
            shapes[pre + "cross_attn.v_proj.weight"] = (kv_out, D)
            shapes[pre + "cross_attn.o_proj.weight"] = (D, q_out)
    for s in range(p - 1):
        shapes[f"model.memory_norms.{s}.weight"] = (D,)
    if cfg.stag_output_mix:
        shapes["model.output_mix.weight"] = (p,)
    return shapes


# ----------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------


def rmsnorm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """x / sqrt(mean(x^2) + eps) * w over the last axis."""
    ms = np.mean(x * x, axis=-1, keepdims=True)
    return x / np.sqrt(ms + eps) * w


def rope_inv_freq(head_dim: int, theta: float, scaling: Optional[dict] = None,
                  max_position_embeddings: Optional[int] = None,
                  seq_len: Optional[int] = None) -> np.ndarray:
    """inv_freq [head_dim / 2] with the transformers RoPE scaling types (docs/MODEL.md).

    `dynamic` rescales θ only for a sequence longer than max_position_embeddings; `seq_len`
    defaults to max_position_embeddings, the longest sequence served.
    """
    half = head_dim // 2
    inv_freq = theta ** (-2.0 * np.arange(half, dtype=np.float64) / head_dim)
    if scaling is None:
        return inv_freq
    kind = scaling["rope_type"]
    factor = float(scaling["factor"])
    if kind == "linear":
        return inv_freq / factor
    if kind == "dynamic":
        max_pos = float(max_position_embeddings)
        L = max_pos if seq_len is None else max(float(seq_len), max_pos)
        base = theta * ((factor * L / max_pos) - (factor - 1.0)) ** (head_dim / (head_dim - 2))
        return base ** (-2.0 * np.arange(half, dtype=np.float64) / head_dim)
    if kind == "llama3":
        old_len = float(scaling["original_max_position_embeddings"])
        low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
        wavelen = 2.0 * math.pi / inv_freq
        smooth = (old_len / wavelen - low) / (high - low)
        blended = (1.0 - smooth) * inv_freq / factor + smooth * inv_freq
        out = np.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
        return np.where(medium, blended, out)
    raise ValueError(f"rope_type {kind} is not implemented")


def model_inv_freq(cfg: "Config") -> np.ndarray:
    return rope_inv_freq(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling,
                         cfg.max_position_embeddings)


def rope_cos_sin(positions: np.ndarray, head_dim: int, theta: float,
                 inv_freq: Optional[np.ndarray] = None):
    """cos and sin tables [T, head_dim], Hugging Face Llama layout (halves duplicated)."""
    if inv_freq is None:
        inv_freq = rope_inv_freq(head_dim, theta)
    angles = np.asarray(positions, dtype=np.float64)[:, None] * inv_freq[None, :]
    angles = np.concatenate([angles, angles], axis=-1)
    return np.cos(angles), np.sin(angles)


def rotate_half(x: np.ndarray) -> np.ndarray:
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def rope(x: np.ndarray, positions: np.ndarray, theta: float,
         inv_freq: Optional[np.ndarray] = None) -> np.ndarray:
    """Apply RoPE to x [T, n_heads, head_dim] at the given positions [T]."""
    cos, sin = rope_cos_sin(positions, x.shape[-1], theta, inv_freq)
    cos, sin = cos[:, None, :], sin[:, None, :]
    return x * cos + rotate_half(x) * sin


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Masked multi-head attention with grouped key/value heads.

    q: [T, H, hd]; k, v: [S, Hkv, hd]; mask: [T, S] bool (True = may attend).
    Returns [T, H*hd]. A query row with no allowed key gets an all-zero output.
    """
    T, H, hd = q.shape
    Hkv = k.shape[1]
    group = H // Hkv
    out = np.zeros((T, H, hd))
    live = mask.any(axis=1)
    scale = 1.0 / math.sqrt(hd)
    for h in range(H):
        g = h // group
        scores = (q[:, h, :] @ k[:, g, :].T) * scale  # [T, S]
        scores = np.where(mask, scores, -np.inf)
        scores[~live] = 0.0  # keep the arithmetic finite; zeroed below
        scores = scores - scores.max(axis=1, keepdims=True)
        w = np.where(mask, np.exp(scores), 0.0)
        w = w / np.where(live, w.sum(axis=1), 1.0)[:, None]
        out[:, h, :] = w @ v[:, g, :]
    out[~live] = 0.0
    return out.reshape(T, H * hd)


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def swiglu(h: np.ndarray, w_gate: np.ndarray, w_up: np.ndarray, w_down: np.ndarray):
    return (silu(h @ w_gate.T) * (h @ w_up.T)) @ w_down.T


def causal_mask(T: int, window: Optional[int] = None) -> np.ndarray:
    """Keys k with k <= i, and i - k < W under a sliding window W (Mistral)."""
    i = np.arange(T)[:, None]
    k = np.arange(T)[None, :]
    m = k <= i
    if window is not None:
        m &= i - k < window
    return m


def cross_mask(T: int, window: Optional[int], S: Optional[int] = None) -> np.ndarray:
    """Keys k with max(0, i - W) <= k <= i - 1 (W = None: unbounded)."""
    S = T if S is None else S
    i = np.arange(T)[:, None]
    k = np.arange(S)[None, :]
    m = k <= i - 1
    if window is not None:
        m &= k >= i - window
    return m


# ----------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------


class Model:
    """A loaded checkpoint: config + float64 tensors."""

    def __init__(self, cfg: Config, tensors: Dict[str, np.ndarray]):
        self.cfg = cfg
        expected = tensor_shapes(cfg)
        missing = [n for n in expected if n not in tensors]
        if missing:
            raise ValueError(f"checkpoint is missing tensors: {missing[:5]}")
        for name, shape in expected.items():
            if tuple(tensors[name].shape) != tuple(shape):
                raise ValueError(f"{name}: shape {tensors[name].shape}, expected {shape}")
        self.w = {n: np.asarray(tensors[n], dtype=np.float64) for n in expected}
        if cfg.tie_word_embeddings:
            self.w["lm_head.weight"] = self.w["model.embed_tokens.weight"]

    def __getitem__(self, name: str) -> np.ndarray:
        return self.w[name]


def _heads(x: np.ndarray, n: int, hd: int) -> np.ndarray:
    return x.reshape(x.shape[0], n, hd)


def self_attention(m: Model, l: int, x: np.ndarray, positions: np.ndarray) -> np.ndarray:
    cfg = m.cfg
    pre = f"model.layers.{l}."
    h = rmsnorm(x, m[pre + "input_layernorm.weight"], cfg.rms_norm_eps)
    q = _heads(h @ m[pre + "self_attn.q_proj.weight"].T, cfg.num_attention_heads, cfg.head_dim)
    k = _heads(h @ m[pre + "self_attn.k_proj.weight"].T, cfg.num_key_value_heads, cfg.head_dim)
    v = _heads(h @ m[pre + "self_attn.v_proj.weight"].T, cfg.num_key_value_heads, cfg.head_dim)
    inv_freq = model_inv_freq(cfg)
    q = rope(q, positions, cfg.rope_theta, inv_freq)
    k = rope(k, positions, cfg.rope_theta, inv_freq)
    o = attention(q, k, v, causal_mask(x.shape[0], cfg.sliding_window))
    return o @ m[pre + "self_attn.o_proj.weight"].T


def cross_attention(m: Model, s: int, j: int, x: np.ndarray, memory: np.ndarray) -> np.ndarray:
    cfg = m.cfg
    pre = f"model.cross_layers.{s}.{j}."
    h = rmsnorm(x, m[pre + "cross_attn_layernorm.weight"], cfg.rms_norm_eps)
    q = _heads(h @ m[pre + "cross_attn.q_proj.weight"].T, cfg.num_attention_heads, cfg.head_dim)
    k = _heads(memory @ m[pre + "cross_attn.k_proj.weight"].T, cfg.num_key_value_heads,
               cfg.head_dim)
    v = _heads(memory @ m[pre + "cross_attn.v_proj.weight"].T, cfg.num_key_value_heads,
               cfg.head_dim)
    o = attention(q, k, v, cross_mask(x.shape[0], cfg.stag_cross_window, memory.shape[0]))
    return o @ m[pre + "cross_attn.o_proj.weight"].T


def mlp(m: Model, l: int, x: np.ndarray) -> np.ndarray:
    pre = f"model.layers.{l}."
    h = rmsnorm(x, m[pre + "post_attention_layernorm.weight"], m.cfg.rms_norm_eps)
    return swiglu(h, m[pre + "mlp.gate_proj.weight"], m[pre + "mlp.up_proj.weight"],
                  m[pre + "mlp.down_proj.weight"])


def run_section(m: Model, s: int, tokens: Sequence[int],
                memory: Optional[np.ndarray] = None) -> np.ndarray:
    """Output [T, D] of section s over the whole sequence.

    ``memory`` ([T', D] with T' >= T - 1, already normalised) is required for s >= 1.
    """
    cfg = m.cfg
    tokens = np.asarray(tokens, dtype=np.int64)
    if tokens.ndim != 1 or len(tokens) == 0:
        raise ValueError("tokens must be a non-empty 1-D sequence")
    if tokens.min() < 0 or tokens.max() >= cfg.vocab_size:
        raise ValueError("token id out of range")
    x = m["model.embed_tokens.weight"][tokens].copy()
    positions = np.arange(len(tokens))
    if s >= 1 and memory is None:
        raise ValueError("sections after the first need a memory")
    for j in range(cfg.layers_per_section):
        l = cfg.layer_index(s, j)
        x = x + self_attention(m, l, x, positions)
        if s >= 1:
            x = x + cross_attention(m, s, j, x, memory)
        x = x + mlp(m, l, x)
    return x


def memory_from(m: Model, s: int, out: np.ndarray) -> np.ndarray:
    """Memory handed from section s to section s + 1."""
    return rmsnorm(out, m[f"model.memory_norms.{s}.weight"], m.cfg.rms_norm_eps)


def section_outputs(m: Model, tokens: Sequence[int]) -> List[np.ndarray]:
    outs: List[np.ndarray] = []
    memory = None
    for s in range(m.cfg.stag_sections):
        out = run_section(m, s, tokens, memory)
        outs.append(out)
        if s < m.cfg.stag_sections - 1:
            memory = memory_from(m, s, out)
    return outs


def logits_from(m: Model, z: np.ndarray) -> np.ndarray:
    h = rmsnorm(z, m["model.norm.weight"], m.cfg.rms_norm_eps)
    return h @ m["lm_head.weight"].T


def combine(m: Model, outs: List[np.ndarray]) -> np.ndarray:
    if m.cfg.stag_output_mix:
        alpha = m["model.output_mix.weight"]
        return sum(alpha[s] * outs[s] for s in range(len(outs)))
    return outs[-1]


def forward(m: Model, tokens: Sequence[int]) -> np.ndarray:
    """Logits [T, V] of the definition ("forward" mode)."""
    return logits_from(m, combine(m, section_outputs(m, tokens)))


def recurrent(m: Model, tokens: Sequence[int], prompt_len: int) -> np.ndarray:
    """Logits [T, V] of recurrent mode (shared weights, p = 2 only).

    Positions < prompt_len: both passes, logits as in ``forward``. Each later position i
    runs section 1 only, cross-attending to a memory whose positions < prompt_len come from
    section 0 over the prompt and whose positions >= prompt_len are the normalised section-1
    outputs of the recurrent pass itself.

    Section 1 is causal in its input and in the memory (it reads memory positions < i only),
    so re-running it over the prefix [0, i] reproduces the earlier positions exactly; we
    exploit that instead of keeping key/value caches.
    """
    cfg = m.cfg
    if not (cfg.stag_shared_weights and cfg.stag_sections == 2):
        raise ValueError("recurrent mode needs stag_shared_weights and stag_sections = 2")
    tokens = list(tokens)
    T = len(tokens)
    P = prompt_len
    if not 1 <= P <= T:
        raise ValueError("prompt_len must be in [1, len(tokens)]")
    logits = np.zeros((T, cfg.vocab_size))
    logits[:P] = forward(m, tokens[:P])
    memory = np.zeros((T, cfg.hidden_size))
    memory[:P] = memory_from(m, 0, run_section(m, 0, tokens[:P]))
    for i in range(P, T):
        out = run_section(m, 1, tokens[: i + 1], memory[: i + 1])[i]
        memory[i] = memory_from(m, 0, out[None, :])[0]
        logits[i] = logits_from(m, out[None, :])[0]
    return logits


# ----------------------------------------------------------------------------------------
# safetensors I/O
# ----------------------------------------------------------------------------------------

_RAW_DTYPES = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),  # converted below
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "U8": np.dtype("u1"),
}


def read_safetensors_header(path: str) -> dict:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n).decode("utf-8"))


def bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """Round float32 to bfloat16 (round to nearest, ties to even); returns uint16 bits."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounding = ((u >> 16) & 1) + 0x7FFF
    return ((u + rounding) >> 16).astype(np.uint16)


def round_to_bf16(x: np.ndarray) -> np.ndarray:
    return bf16_bits_to_f32(f32_to_bf16_bits(x))


def read_safetensors_raw(path: str) -> Dict[str, np.ndarray]:
    """Parse a safetensors file by hand (used for bf16, which numpy cannot represent)."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n].decode("utf-8"))
    base = 8 + n
    out: Dict[str, np.ndarray] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = info["dtype"]
        if dtype not in _RAW_DTYPES:
            raise ValueError(f"{path}: tensor {name} has unsupported dtype {dtype}")
        begin, end = info["data_offsets"]
        arr = np.frombuffer(data[base + begin : base + end], dtype=_RAW_DTYPES[dtype])
        arr = arr.reshape(info["shape"])
        if dtype == "BF16":
            arr = bf16_bits_to_f32(arr)
        out[name] = arr.copy()
    return out


def read_safetensors(path: str) -> Dict[str, np.ndarray]:
    header = read_safetensors_header(path)
    if any(isinstance(v, dict) and v.get("dtype") == "BF16" for v in header.values()):
        return read_safetensors_raw(path)
    try:
        from safetensors.numpy import load_file
    except ImportError:
        # Where only numpy is installed (the system Python the torch tests run under).
        return read_safetensors_raw(path)

    return load_file(path)


def write_safetensors_raw(path: str, tensors: Dict[str, np.ndarray], dtype: str,
                          metadata: Optional[Dict[str, str]] = None) -> None:
    """Write float tensors as F32 or BF16 with a hand-built header."""
    header: Dict[str, dict] = {}
    blobs: List[bytes] = []
    offset = 0
    for name in sorted(tensors):
        arr = np.asarray(tensors[name], dtype=np.float32)
        if dtype == "BF16":
            raw = f32_to_bf16_bits(arr).astype("<u2").tobytes()
        elif dtype == "F32":
            raw = arr.astype("<f4").tobytes()
        else:
            raise ValueError(dtype)
        header[name] = {"dtype": dtype, "shape": list(arr.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    if metadata:
        header["__metadata__"] = metadata
    hb = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hb += b" " * ((8 - len(hb) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for b in blobs:
            f.write(b)


def load_tensors(model_dir: str) -> Dict[str, np.ndarray]:
    single = os.path.join(model_dir, "model.safetensors")
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(single):
        return read_safetensors(single)
    if os.path.exists(index):
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        tensors: Dict[str, np.ndarray] = {}
        for shard in sorted(set(weight_map.values())):
            for name, arr in read_safetensors(os.path.join(model_dir, shard)).items():
                if weight_map.get(name) == shard:
                    tensors[name] = arr
        missing = [n for n in weight_map if n not in tensors]
        if missing:
            raise ValueError(f"index names tensors not found in their shards: {missing[:5]}")
        return tensors
    raise FileNotFoundError(f"{model_dir}: no model.safetensors or model.safetensors.index.json")


def load_config(model_dir: str) -> Config:
    with open(os.path.join(model_dir, "config.json")) as f:
        return Config.from_dict(json.load(f))


def load_checkpoint(model_dir: str) -> Model:
    return Model(load_config(model_dir), load_tensors(model_dir))


# ----------------------------------------------------------------------------------------
# Random checkpoints (tests)
# ----------------------------------------------------------------------------------------


def random_tensors(cfg: Config, seed: int) -> Dict[str, np.ndarray]:
    """float32 tensors: matrices ~ N(0, 1/sqrt(fan_in)), norm weights ~ 1 + 0.1 N(0, 1),
    output mix ~ N(0.5, 0.2)."""
    rng = np.random.default_rng(seed)
    out: Dict[str, np.ndarray] = {}
    for name, shape in tensor_shapes(cfg).items():
        if name == "model.output_mix.weight":
            a = rng.normal(0.5, 0.2, size=shape)
        elif len(shape) == 1:
            a = 1.0 + 0.1 * rng.standard_normal(shape)
        else:
            a = rng.standard_normal(shape) / math.sqrt(shape[1])
        out[name] = a.astype(np.float32)
    return out


def write_checkpoint(model_dir: str, cfg_dict: dict, tensors: Dict[str, np.ndarray],
                     dtype: str = "f32", shards: int = 1) -> None:
    """Write config.json and the tensors (f32 or bf16; ``shards`` > 1 writes
    model-0000i-of-0000n.safetensors files plus model.safetensors.index.json)."""
    os.makedirs(model_dir, exist_ok=True)
    with open(os.path.join(model_dir, "config.json"), "w") as f:
        json.dump(cfg_dict, f, indent=2)
    st_dtype = {"f32": "F32", "bf16": "BF16"}[dtype]
    meta = {"format": "pt"}
    names = sorted(tensors)
    if shards <= 1:
        write_safetensors_raw(os.path.join(model_dir, "model.safetensors"), tensors, st_dtype,
                              meta)
        return
    groups = [names[i::shards] for i in range(shards)]
    weight_map = {}
    total = 0
    for i, group in enumerate(groups):
        fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        write_safetensors_raw(os.path.join(model_dir, fname),
                              {n: tensors[n] for n in group}, st_dtype, meta)
        for n in group:
            weight_map[n] = fname
            total += tensors[n].size * (2 if dtype == "bf16" else 4)
    with open(os.path.join(model_dir, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)


def write_random_checkpoint(model_dir: str, cfg_dict: dict, seed: int = 0, dtype: str = "f32",
                            shards: int = 1) -> Model:
    """Write a random checkpoint; returns it as this module would load it (so for bf16 the
    weights are the bf16-rounded ones)."""
    cfg = Config.from_dict(cfg_dict)
    tensors = random_tensors(cfg, seed)
    write_checkpoint(model_dir, cfg_dict, tensors, dtype=dtype, shards=shards)
    if dtype == "bf16":
        tensors = {n: round_to_bf16(a) for n, a in tensors.items()}
    return Model(cfg, tensors)


# ----------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------


def _main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sc = sub.add_parser("score", help="logits of a token sequence")
    sc.add_argument("--model", required=True)
    sc.add_argument("--tokens", required=True, help="comma-separated token ids")
    sc.add_argument("--mode", choices=["forward", "recurrent"], default="forward")
    sc.add_argument("--prompt-len", type=int, default=1)
    sc.add_argument("--out", help="write logits [T, V] (f32) to this .safetensors file")
    rd = sub.add_parser("random", help="write a random checkpoint")
    rd.add_argument("--config", required=True)
    rd.add_argument("--seed", type=int, default=0)
    rd.add_argument("--out", required=True)
    rd.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    rd.add_argument("--shards", type=int, default=1)
    args = ap.parse_args(argv)
    if args.cmd == "score":
        m = load_checkpoint(args.model)
        tokens = [int(t) for t in args.tokens.split(",") if t.strip()]
        if args.mode == "forward":
            logits = forward(m, tokens)
        else:
            logits = recurrent(m, tokens, args.prompt_len)
        if args.out:
            write_safetensors_raw(args.out, {"logits": logits}, "F32")
        else:
            np.set_printoptions(precision=6, suppress=True, linewidth=160)
            print(logits)
    else:
        with open(args.config) as f:
            cfg_dict = json.load(f)
        write_random_checkpoint(args.out, cfg_dict, args.seed, args.dtype, args.shards)
    return 0


if __name__ == "__main__":
    sys.exit(_main())
