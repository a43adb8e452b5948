"""The StagFormer model contract (docs/MODEL.md) as a PyTorch ``nn.Module``, for training.

Every variant of the contract: p sections, separate or shared weights, an unbounded or
windowed cross-attention memory, the learned output mix, GQA, tied embeddings, Mistral's
sliding window and the RoPE scalings. Training runs the definition over whole sequences: each
section s ≥ 1 cross-attends to section s − 1's normalised outputs at positions
max(0, i − W) ≤ k ≤ i − 1 (the staggered mask), so one forward pass trains every position at
once, exactly as the decoders later run it one token at a time.

The module's parameters carry the checkpoint's tensor names (``state_dict()`` keys are
``model.layers.0.self_attn.q_proj.weight`` and so on), so :func:`load` reads this project's
checkpoints (f32, f16 or bf16, single file or sharded) and :meth:`StagFormer.save` writes one
that ``stagformer score`` and the decoders load. Config parsing and the safetensors files go
through the numpy reference (``stagformer_ref``), which holds those rules once; the math here
is written in torch independently of it, and ``python/tests/test_torch_model.py`` checks the
two against each other in float64.
"""

from __future__ import annotations

import json
import math
import os
from typing import Dict, List, Optional

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

import stagformer_ref as ref

Config = ref.Config


class RMSNorm(nn.Module):
    """x / sqrt(mean(x²) + eps) · weight over the last axis."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def _linear(n_in: int, n_out: int) -> nn.Linear:
    return nn.Linear(n_in, n_out, bias=False)


class Projections(nn.Module):
    """q, k, v and o projections of one attention (self or cross)."""

    def __init__(self, cfg: Config):
        super().__init__()
        q_out = cfg.num_attention_heads * cfg.head_dim
        kv_out = cfg.num_key_value_heads * cfg.head_dim
        self.q_proj = _linear(cfg.hidden_size, q_out)
        self.k_proj = _linear(cfg.hidden_size, kv_out)
        self.v_proj = _linear(cfg.hidden_size, kv_out)
        self.o_proj = _linear(q_out, cfg.hidden_size)


class Mlp(nn.Module):
    """SwiGLU: down(silu(gate(h)) · up(h))."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.gate_proj = _linear(cfg.hidden_size, cfg.intermediate_size)
        self.up_proj = _linear(cfg.hidden_size, cfg.intermediate_size)
        self.down_proj = _linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


class Layer(nn.Module):
    """The stored self-attention + MLP layer (``model.layers.{l}``)."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Projections(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = Mlp(cfg)


class CrossLayer(nn.Module):
    """The cross-attention of layer j in section s ≥ 1 (``model.cross_layers.{s}.{j}``)."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.cross_attn_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.cross_attn = Projections(cfg)


class OutputMix(nn.Module):
    """The learned weights α_s of the output mix (``model.output_mix.weight``, [p])."""

    def __init__(self, p: int):
        super().__init__()
        self.weight = nn.Parameter(torch.full((p,), 1.0 / p))


class Body(nn.Module):
    """Everything under ``model.``: embeddings, layers, cross layers, norms, output mix."""

    def __init__(self, cfg: Config):
        super().__init__()
        p = cfg.stag_sections
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Layer(cfg) for _ in range(cfg.num_hidden_layers))
        # Keys "1" .. "p-1": section 0 has no cross-attention.
        self.cross_layers = nn.ModuleDict({
            str(s): nn.ModuleList(CrossLayer(cfg) for _ in range(cfg.layers_per_section))
            for s in range(1, p)
        })
        self.memory_norms = nn.ModuleList(
            RMSNorm(cfg.hidden_size, cfg.rms_norm_eps) for _ in range(p - 1))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        if cfg.stag_output_mix:
            self.output_mix = OutputMix(p)


def inv_freq(cfg: Config) -> torch.Tensor:
    """RoPE inverse frequencies [head_dim / 2] in float64, with the transformers scalings
    (docs/MODEL.md, "RoPE"): ``linear`` divides them, ``llama3`` divides the low ones and
    blends the middle band, ``dynamic`` rescales θ for sequences past
    max_position_embeddings (the longest served, so a trained model sees θ unchanged)."""
    hd, theta = cfg.head_dim, cfg.rope_theta
    exponents = torch.arange(0, hd, 2, dtype=torch.float64) / hd
    freq = theta ** -exponents
    scaling = cfg.rope_scaling
    if scaling is None:
        return freq
    kind, factor = scaling["rope_type"], float(scaling["factor"])
    if kind == "linear":
        return freq / factor
    if kind == "dynamic":
        # θ' = θ · (factor · L / L_max − (factor − 1))^(hd / (hd − 2)), and every sequence
        # served has L ≤ L_max, where transformers takes L = L_max: θ' = θ.
        return freq
    if kind == "llama3":
        old = float(scaling["original_max_position_embeddings"])
        low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
        wavelen = 2 * math.pi / freq
        smooth = (old / wavelen - low) / (high - low)
        blended = (1 - smooth) * freq / factor + smooth * freq
        out = torch.where(wavelen > old / low, freq / factor, freq)
        middle = (wavelen >= old / high) & (wavelen <= old / low)
        return torch.where(middle, blended, out)
    raise ValueError(f"rope_type {kind} is not implemented")


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotates x [B, heads, T, hd] in the Llama layout (first half paired with the second)."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def _self_mask(T: int, window: Optional[int], device) -> torch.Tensor:
    """Keys k ≤ i, and i − k < W under a sliding window."""
    i = torch.arange(T, device=device)[:, None]
    k = torch.arange(T, device=device)[None, :]
    mask = k <= i
    if window is not None:
        mask &= i - k < window
    return mask


def _cross_mask(T: int, window: Optional[int], device) -> torch.Tensor:
    """The staggered mask: keys max(0, i − W) ≤ k ≤ i − 1 (W = None: unbounded)."""
    i = torch.arange(T, device=device)[:, None]
    k = torch.arange(T, device=device)[None, :]
    mask = k <= i - 1
    if window is not None:
        mask &= k >= i - window
    return mask


class StagFormer(nn.Module):
    """A StagFormer of ``cfg`` (a ``stagformer_ref.Config``). ``forward(tokens)`` takes token
    ids [B, T] (or [T]) and returns logits [B, T, V] (or [T, V]) of the definition.

    Parameters start as :func:`reset_parameters` draws them (N(0, 0.02) matrices, unit norms,
    an even output mix); :func:`load` overwrites them with a checkpoint's.
    """

    def __init__(self, cfg: Config):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.model = Body(cfg)
        if not cfg.tie_word_embeddings:
            self.lm_head = _linear(cfg.hidden_size, cfg.vocab_size)
        self.register_buffer("inv_freq", inv_freq(cfg), persistent=False)
        self.reset_parameters()

    def reset_parameters(self, std: float = 0.02, generator: Optional[torch.Generator] = None):
        """Matrices ~ N(0, std²), the output projections of each block scaled by
        1 / sqrt(2 · layers) (GPT-2's rule, so the residual stream does not grow with depth),
        norms 1, output mix 1/p."""
        depth = 2 * self.cfg.layers_per_section * self.cfg.stag_sections
        with torch.no_grad():
            for name, param in self.named_parameters():
                if param.dim() == 1:
                    param.fill_(1.0 / self.cfg.stag_sections if "output_mix" in name else 1.0)
                    continue
                scale = std / math.sqrt(depth) if name.endswith(("o_proj.weight",
                                                                 "down_proj.weight")) else std
                param.normal_(0.0, scale, generator=generator)

    def lm_weight(self) -> torch.Tensor:
        """The output projection [V, D] (the embedding when tied)."""
        if self.cfg.tie_word_embeddings:
            return self.model.embed_tokens.weight
        return self.lm_head.weight

    def _attend(self, proj: Projections, h: torch.Tensor, kv: torch.Tensor,
                mask: torch.Tensor, rope: Optional[tuple]) -> torch.Tensor:
        """Grouped-query attention of h [B, T, D] over kv [B, S, D] under mask [T, S]; a
        query with no allowed key (position 0 of a cross-attention) gets zeros."""
        cfg = self.cfg
        B, T, _ = h.shape
        S = kv.shape[1]
        H, Hkv, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        q = proj.q_proj(h).view(B, T, H, hd).transpose(1, 2)
        k = proj.k_proj(kv).view(B, S, Hkv, hd).transpose(1, 2)
        v = proj.v_proj(kv).view(B, S, Hkv, hd).transpose(1, 2)
        if rope is not None:
            cos, sin = rope
            q, k = _rope(q, cos, sin), _rope(k, cos, sin)
        group = H // Hkv
        k = k.repeat_interleave(group, dim=1)
        v = v.repeat_interleave(group, dim=1)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
        scores = scores.masked_fill(~mask, float("-inf"))
        live = mask.any(dim=-1)  # [T]
        # A row without keys would be all -inf (NaN after softmax): give it zeros instead.
        scores = scores.masked_fill(~live[:, None], 0.0)
        weights = torch.softmax(scores, dim=-1) * live[:, None].to(scores.dtype)
        out = (weights @ v).transpose(1, 2).reshape(B, T, H * hd)
        return proj.o_proj(out)

    def _section(self, s: int, tokens: torch.Tensor, memory: Optional[torch.Tensor],
                 rope: tuple) -> torch.Tensor:
        """Section s over the whole sequence: its output [B, T, D] (before any norm)."""
        cfg = self.cfg
        T = tokens.shape[1]
        self_mask = _self_mask(T, cfg.sliding_window, tokens.device)
        cross_mask = _cross_mask(T, cfg.stag_cross_window, tokens.device)
        x = self.model.embed_tokens(tokens)
        for j in range(cfg.layers_per_section):
            layer = self.model.layers[cfg.layer_index(s, j)]
            h = layer.input_layernorm(x)
            x = x + self._attend(layer.self_attn, h, h, self_mask, rope)
            if s >= 1:
                cross = self.model.cross_layers[str(s)][j]
                h = cross.cross_attn_layernorm(x)
                x = x + self._attend(cross.cross_attn, h, memory, cross_mask, None)
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return x

    def hidden(self, tokens: torch.Tensor) -> torch.Tensor:
        """The combined output z [B, T, D]: the last section's, or the output mix of all."""
        T = tokens.shape[1]
        angles = torch.arange(T, dtype=torch.float64, device=tokens.device)[:, None] \
            * self.inv_freq.to(tokens.device)[None, :]
        angles = torch.cat([angles, angles], dim=-1)
        dtype = self.model.embed_tokens.weight.dtype
        rope = (angles.cos().to(dtype), angles.sin().to(dtype))
        outs: List[torch.Tensor] = []
        memory = None
        for s in range(self.cfg.stag_sections):
            out = self._section(s, tokens, memory, rope)
            outs.append(out)
            if s + 1 < self.cfg.stag_sections:
                memory = self.model.memory_norms[s](out)
        if self.cfg.stag_output_mix:
            alpha = self.model.output_mix.weight
            return sum(alpha[s] * outs[s] for s in range(len(outs)))
        return outs[-1]

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits [B, T, V] of token ids [B, T] (a 1-D input gives [T, V])."""
        single = tokens.dim() == 1
        if single:
            tokens = tokens[None, :]
        if tokens.dim() != 2 or tokens.shape[1] == 0:
            raise ValueError("tokens must be [T] or [B, T] with T >= 1")
        if int(tokens.min()) < 0 or int(tokens.max()) >= self.cfg.vocab_size:
            raise ValueError(f"token id outside the vocabulary of {self.cfg.vocab_size}")
        logits = self.model.norm(self.hidden(tokens)) @ self.lm_weight().T
        return logits[0] if single else logits

    def loss(self, tokens: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy of ids [B, T] (position t predicts t + 1)."""
        logits = self.forward(tokens[:, :-1])
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                               tokens[:, 1:].reshape(-1))

    def checkpoint_tensors(self) -> Dict[str, np.ndarray]:
        """The checkpoint's tensors (float32 numpy), named as docs/MODEL.md names them."""
        return {name: t.detach().to("cpu", torch.float32).numpy()
                for name, t in self.state_dict().items()}

    def save(self, model_dir: str, dtype: str = "f32", extra_config: Optional[dict] = None):
        """Writes ``config.json`` and ``model.safetensors`` (``dtype`` "f32" or "bf16") to
        ``model_dir``; ``extra_config`` adds harmless keys (``bos_token_id``, ...)."""
        config = config_json(self.cfg)
        config.update(extra_config or {})
        ref.write_checkpoint(model_dir, config, self.checkpoint_tensors(), dtype=dtype)


def config_json(cfg: Config) -> dict:
    """``cfg`` as the ``config.json`` of a StagFormer checkpoint (``model_type`` stagformer)."""
    d = {
        "architectures": ["StagFormerForCausalLM"],
        "model_type": "stagformer",
        "hidden_act": "silu",
    }
    for field in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                  "num_attention_heads", "num_key_value_heads", "head_dim", "rms_norm_eps",
                  "rope_theta", "sliding_window", "max_position_embeddings",
                  "tie_word_embeddings", "stag_sections", "stag_shared_weights",
                  "stag_cross_window", "stag_output_mix"):
        d[field] = getattr(cfg, field)
    d["rope_scaling"] = cfg.rope_scaling
    if d["max_position_embeddings"] is None:
        d["max_position_embeddings"] = 2048
    return d


def from_tensors(cfg: Config, tensors: Dict[str, np.ndarray],
                 dtype: torch.dtype = torch.float32) -> StagFormer:
    """A module of ``cfg`` holding ``tensors`` (every tensor the checkpoint must have, and no
    other), in ``dtype``."""
    module = StagFormer(cfg).to(dtype)
    expected = set(module.state_dict())
    given = set(tensors)
    if expected - given:
        raise ValueError(f"checkpoint is missing tensors: {sorted(expected - given)[:5]}")
    if given - expected:
        raise ValueError(f"checkpoint has unexpected tensors: {sorted(given - expected)[:5]}")
    state = {name: torch.from_numpy(np.asarray(tensors[name], dtype=np.float64)).to(dtype)
             for name in expected}
    module.load_state_dict(state, strict=True)
    return module


def load(model_dir: str, dtype: torch.dtype = torch.float32) -> StagFormer:
    """The checkpoint in ``model_dir`` (config.json + safetensors) as a module in ``dtype``."""
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = Config.from_dict(json.load(f))
    return from_tensors(cfg, ref.load_tensors(model_dir), dtype)
