"""Checks of the numpy reference on its own: hand-computed building blocks, a p = 1 model
against a plain-Python Llama, and self-consistency properties of the StagFormer contract."""

import copy
import math

import numpy as np
import pytest

import stagformer_ref as ref

# ----------------------------------------------------------------------------------------
# Building blocks, numbers worked out by hand
# ----------------------------------------------------------------------------------------


def test_rmsnorm_by_hand():
    x = np.array([1.0, 2.0, 3.0, 4.0])  # mean of squares = 30 / 4 = 7.5
    np.testing.assert_allclose(ref.rmsnorm(x, np.ones(4), 0.0), x / math.sqrt(7.5))
    w = np.array([2.0, 1.0, 0.5, 0.0])
    np.testing.assert_allclose(ref.rmsnorm(x, w, 0.5), x * w / math.sqrt(8.0))


def test_rope_head_dim_2_by_hand():
    # head_dim 2: a single frequency 1, so the angle is the position itself.
    q = np.array([[[1.0, 0.0]], [[1.0, 0.0]], [[0.0, 1.0]]])  # [T=3, heads=1, 2]
    out = ref.rope(q, np.array([0, 1, 1]), 10000.0)
    np.testing.assert_allclose(out[0, 0], [1.0, 0.0])  # position 0: identity
    np.testing.assert_allclose(out[1, 0], [math.cos(1), math.sin(1)])
    np.testing.assert_allclose(out[2, 0], [-math.sin(1), math.cos(1)])


def test_rope_head_dim_4_pairs_halves():
    # head_dim 4, theta 100: inv_freq = [1, 100^(-1/2)] = [1, 0.1]; at position 2 the
    # angles are [2, 0.2]. Pairs are (0, 2) and (1, 3) (first half with second half).
    q = np.array([[[1.0, 2.0, 3.0, 4.0]]])
    out = ref.rope(q, np.array([2]), 100.0)[0, 0]
    c2, s2, c02, s02 = math.cos(2), math.sin(2), math.cos(0.2), math.sin(0.2)
    expected = [1 * c2 - 3 * s2, 2 * c02 - 4 * s02, 3 * c2 + 1 * s2, 4 * c02 + 2 * s02]
    np.testing.assert_allclose(out, expected, rtol=1e-14)


def test_attention_by_hand():
    # One query, two keys with scores 0 and ln 3 -> weights 1/4 and 3/4.
    q = np.array([[[1.0]]])
    k = np.array([[[0.0]], [[math.log(3.0)]]])
    v = np.array([[[4.0]], [[8.0]]])
    out = ref.attention(q, k, v, np.array([[True, True]]))
    np.testing.assert_allclose(out, [[7.0]])
    # Masking the second key leaves v0.
    out = ref.attention(q, k, v, np.array([[True, False]]))
    np.testing.assert_allclose(out, [[4.0]])


def test_attention_gqa_and_scale_by_hand():
    # Two query heads share one kv head; head_dim 4 -> scale 1/2.
    q = np.zeros((1, 2, 4))
    q[0, 0] = [2 * math.log(3.0), 0, 0, 0]  # score with k1 = ln 3 after the 1/2 scale
    q[0, 1] = [0, 0, 0, 0]  # uniform weights
    k = np.zeros((2, 1, 4))
    k[1, 0, 0] = 1.0
    v = np.zeros((2, 1, 4))
    v[0, 0] = [4, 0, 0, 1]
    v[1, 0] = [8, 0, 0, 1]
    out = ref.attention(q, k, v, np.ones((1, 2), dtype=bool)).reshape(2, 4)
    np.testing.assert_allclose(out[0], [7, 0, 0, 1])
    np.testing.assert_allclose(out[1], [6, 0, 0, 1])


def test_attention_gqa_grouping():
    # Four query heads, two kv heads: heads 0 and 1 read kv head 0, heads 2 and 3 kv head 1.
    q = np.zeros((1, 4, 2))
    k = np.zeros((1, 2, 2))
    v = np.array([[[1.0, 2.0], [3.0, 4.0]]])
    out = ref.attention(q, k, v, np.ones((1, 1), dtype=bool)).reshape(4, 2)
    np.testing.assert_array_equal(out, [[1, 2], [1, 2], [3, 4], [3, 4]])


def test_attention_empty_row_is_exactly_zero():
    rng = np.random.default_rng(0)
    q, k, v = rng.normal(size=(3, 2, 4)), rng.normal(size=(3, 1, 4)), rng.normal(size=(3, 1, 4))
    mask = ref.cross_mask(3, None)
    out = ref.attention(q, k, v, mask)
    assert np.all(out[0] == 0.0)
    assert np.all(np.isfinite(out))


def test_masks():
    T = 5
    np.testing.assert_array_equal(ref.causal_mask(3), [[1, 0, 0], [1, 1, 0], [1, 1, 1]])
    unbounded = ref.cross_mask(T, None)
    np.testing.assert_array_equal(unbounded, np.tril(np.ones((T, T), dtype=bool), -1))
    w1 = ref.cross_mask(T, 1)
    np.testing.assert_array_equal(w1, np.eye(T, k=-1, dtype=bool))  # only key i - 1
    w3 = ref.cross_mask(T, 3)
    expected = [[0, 0, 0, 0, 0],
                [1, 0, 0, 0, 0],
                [1, 1, 0, 0, 0],
                [1, 1, 1, 0, 0],
                [0, 1, 1, 1, 0]]
    np.testing.assert_array_equal(w3, np.array(expected, dtype=bool))
    np.testing.assert_array_equal(ref.cross_mask(T, T), unbounded)


def test_swiglu_by_hand():
    h = np.array([[1.0, -1.0]])
    wg = np.array([[1.0, 0.0], [0.0, 0.0]])  # gate pre-activations [1, 0]
    wu = np.array([[2.0, 0.0], [0.0, 5.0]])  # up = [2, -5]
    wd = np.array([[1.0, 1.0]])
    silu1 = 1.0 / (1.0 + math.exp(-1.0))
    np.testing.assert_allclose(ref.swiglu(h, wg, wu, wd), [[2.0 * silu1]])


def test_bf16_rounding():
    x = np.array([1.0, 1.0 + 2 ** -8, 1.0 + 2 ** -7 + 2 ** -8, 1.0 + 2 ** -9, -3.5],
                 dtype=np.float32)
    # ties go to even: 1 + 2^-8 -> 1, 1 + 3*2^-8 -> 1 + 2^-6; below half rounds down.
    np.testing.assert_array_equal(ref.round_to_bf16(x), [1.0, 1.0, 1.0 + 2 ** -6, 1.0, -3.5])


# ----------------------------------------------------------------------------------------
# p = 1 is plain Llama: compare with a scalar, plain-Python Llama
# ----------------------------------------------------------------------------------------


def _fixed_matrix(rows, cols, a, b, c=0):
    """Small fixed weights in [-0.3, 0.3], no randomness."""
    return [[(((a * r + b * q + c) % 7) - 3) / 10.0 for q in range(cols)] for r in range(rows)]


def _fixed_vector(n, a):
    return [1.0 + (((a * i) % 5) - 2) / 20.0 for i in range(n)]


def _tiny_llama(n_kv_heads, tied, n_heads=2):
    V, H, hd, F = 5, n_heads, 2, 3
    D = H * hd
    cfg = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": V, "hidden_size": D, "intermediate_size": F, "num_hidden_layers": 1,
        "num_attention_heads": H, "num_key_value_heads": n_kv_heads,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 16,
        "tie_word_embeddings": tied,
    }
    w = {
        "model.embed_tokens.weight": _fixed_matrix(V, D, 3, 2, 1),
        "model.norm.weight": _fixed_vector(D, 3),
        "model.layers.0.input_layernorm.weight": _fixed_vector(D, 1),
        "model.layers.0.post_attention_layernorm.weight": _fixed_vector(D, 2),
        "model.layers.0.self_attn.q_proj.weight": _fixed_matrix(H * hd, D, 1, 3),
        "model.layers.0.self_attn.k_proj.weight": _fixed_matrix(n_kv_heads * hd, D, 2, 5, 1),
        "model.layers.0.self_attn.v_proj.weight": _fixed_matrix(n_kv_heads * hd, D, 4, 1, 2),
        "model.layers.0.self_attn.o_proj.weight": _fixed_matrix(D, H * hd, 5, 2, 3),
        "model.layers.0.mlp.gate_proj.weight": _fixed_matrix(F, D, 1, 4, 4),
        "model.layers.0.mlp.up_proj.weight": _fixed_matrix(F, D, 3, 1, 5),
        "model.layers.0.mlp.down_proj.weight": _fixed_matrix(D, F, 2, 3, 6),
    }
    if not tied:
        w["lm_head.weight"] = _fixed_matrix(V, D, 6, 1, 2)
    return cfg, w


def _python_llama_logits(cfg, w, tokens):
    """A one-layer Llama written with Python floats and loops only."""
    D, H = cfg["hidden_size"], cfg["num_attention_heads"]
    Hkv, eps, theta = cfg["num_key_value_heads"], cfg["rms_norm_eps"], cfg["rope_theta"]
    hd = D // H

    def matvec(m, x):
        return [sum(row[c] * x[c] for c in range(len(x))) for row in m]

    def rms(x, g):
        r = 1.0 / math.sqrt(sum(v * v for v in x) / len(x) + eps)
        return [x[c] * r * g[c] for c in range(len(x))]

    def rope_heads(vec, n_heads, pos):
        out = list(vec)
        half = hd // 2
        for h in range(n_heads):
            for m in range(half):
                angle = pos * theta ** (-2.0 * m / hd)
                a, b = vec[h * hd + m], vec[h * hd + m + half]
                out[h * hd + m] = a * math.cos(angle) - b * math.sin(angle)
                out[h * hd + m + half] = b * math.cos(angle) + a * math.sin(angle)
        return out

    pre = "model.layers.0."
    xs = [list(w["model.embed_tokens.weight"][t]) for t in tokens]
    hs = [rms(x, w[pre + "input_layernorm.weight"]) for x in xs]
    qs = [rope_heads(matvec(w[pre + "self_attn.q_proj.weight"], h), H, i)
          for i, h in enumerate(hs)]
    ks = [rope_heads(matvec(w[pre + "self_attn.k_proj.weight"], h), Hkv, i)
          for i, h in enumerate(hs)]
    vs = [matvec(w[pre + "self_attn.v_proj.weight"], h) for h in hs]
    lm = w["model.embed_tokens.weight"] if cfg["tie_word_embeddings"] else w["lm_head.weight"]
    logits = []
    for i in range(len(tokens)):
        attn = []
        for h in range(H):
            g = h // (H // Hkv)
            scores = [sum(qs[i][h * hd + d] * ks[k][g * hd + d] for d in range(hd))
                      / math.sqrt(hd) for k in range(i + 1)]
            mx = max(scores)
            e = [math.exp(s - mx) for s in scores]
            z = sum(e)
            for d in range(hd):
                attn.append(sum(e[k] / z * vs[k][g * hd + d] for k in range(i + 1)))
        o = matvec(w[pre + "self_attn.o_proj.weight"], attn)
        x = [xs[i][c] + o[c] for c in range(D)]
        h2 = rms(x, w[pre + "post_attention_layernorm.weight"])
        gate = matvec(w[pre + "mlp.gate_proj.weight"], h2)
        up = matvec(w[pre + "mlp.up_proj.weight"], h2)
        act = [gate[f] / (1.0 + math.exp(-gate[f])) * up[f] for f in range(len(gate))]
        down = matvec(w[pre + "mlp.down_proj.weight"], act)
        x = [x[c] + down[c] for c in range(D)]
        logits.append(matvec(lm, rms(x, w["model.norm.weight"])))
    return logits


@pytest.mark.parametrize("n_heads,n_kv_heads", [(2, 2), (2, 1), (4, 2)])
@pytest.mark.parametrize("tied", [False, True])
def test_p1_is_plain_llama(tmp_path, n_heads, n_kv_heads, tied):
    cfg, w = _tiny_llama(n_kv_heads, tied, n_heads)
    tokens = [3, 1, 4, 1, 0, 2]
    expected = _python_llama_logits(cfg, w, tokens)
    # Through the checkpoint writer and loader (a plain HF config: no stag_* keys).
    tensors = {n: np.array(v, dtype=np.float32) for n, v in w.items()}
    ref.write_checkpoint(str(tmp_path), cfg, tensors)
    m = ref.load_checkpoint(str(tmp_path))
    assert m.cfg.stag_sections == 1 and m.cfg.head_dim == 2
    assert m.cfg.num_key_value_heads == n_kv_heads
    got = ref.forward(m, tokens)
    # The weights are float32-exact decimals only up to rounding; compare with the float32
    # values the loader saw.
    w32 = {n: np.array(v, dtype=np.float32).astype(np.float64).tolist() for n, v in w.items()}
    expected32 = _python_llama_logits(cfg, w32, tokens)
    np.testing.assert_allclose(got, expected32, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


def test_p1_first_position_by_hand():
    """At position 0 attention returns v_0 and RoPE is the identity, so the first logits
    row is a short chain of matrix products; spell it out."""
    cfg, w = _tiny_llama(2, False)
    m = ref.Model(ref.Config.from_dict(cfg), {n: np.array(v) for n, v in w.items()})
    t = 2
    pre = "model.layers.0."
    g = lambda n: np.array(w[n])  # noqa: E731
    eps = cfg["rms_norm_eps"]

    def rms(x, gain):
        return x / math.sqrt(float(np.mean(x * x)) + eps) * gain

    x = g("model.embed_tokens.weight")[t]
    v0 = g(pre + "self_attn.v_proj.weight") @ rms(x, g(pre + "input_layernorm.weight"))
    x = x + g(pre + "self_attn.o_proj.weight") @ v0
    h = rms(x, g(pre + "post_attention_layernorm.weight"))
    gate, up = g(pre + "mlp.gate_proj.weight") @ h, g(pre + "mlp.up_proj.weight") @ h
    x = x + g(pre + "mlp.down_proj.weight") @ (gate / (1 + np.exp(-gate)) * up)
    expected = g("lm_head.weight") @ rms(x, g("model.norm.weight"))
    np.testing.assert_allclose(ref.forward(m, [t])[0], expected, rtol=1e-12)


# ----------------------------------------------------------------------------------------
# StagFormer self-consistency
# ----------------------------------------------------------------------------------------


def _cfg(**kw):
    base = {
        "vocab_size": 40, "hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "max_position_embeddings": 64, "tie_word_embeddings": False,
        "stag_sections": 2, "stag_shared_weights": False, "stag_cross_window": None,
        "stag_output_mix": False,
    }
    base.update(kw)
    return base


def _model(seed=0, **kw):
    cfg = ref.Config.from_dict(_cfg(**kw))
    return ref.Model(cfg, ref.random_tensors(cfg, seed))


TOKENS = [5, 17, 3, 29, 0, 11, 38, 7, 22, 13, 2]


def test_tensor_names_shared_vs_separate():
    sep = ref.tensor_shapes(ref.Config.from_dict(_cfg(num_hidden_layers=4, stag_sections=2)))
    assert "model.layers.3.mlp.down_proj.weight" in sep
    assert "model.cross_layers.1.1.cross_attn.o_proj.weight" in sep
    assert "model.cross_layers.0.0.cross_attn.o_proj.weight" not in sep
    assert "model.memory_norms.0.weight" in sep and "model.memory_norms.1.weight" not in sep
    shared = ref.tensor_shapes(ref.Config.from_dict(
        _cfg(num_hidden_layers=2, stag_sections=3, stag_shared_weights=True,
             stag_output_mix=True)))
    assert "model.layers.1.mlp.down_proj.weight" in shared
    assert "model.layers.2.mlp.down_proj.weight" not in shared
    assert "model.cross_layers.2.1.cross_attn.q_proj.weight" in shared
    assert shared["model.output_mix.weight"] == (3,)


@pytest.mark.parametrize("p,shared", [(2, False), (3, True), (4, False)])
def test_window_at_least_T_equals_unbounded(p, shared):
    layers = 2 if shared else 2 * p
    T = len(TOKENS)
    a = _model(num_hidden_layers=layers, stag_sections=p, stag_shared_weights=shared)
    b = copy.copy(a)
    b.cfg = ref.Config.from_dict(_cfg(num_hidden_layers=layers, stag_sections=p,
                                      stag_shared_weights=shared, stag_cross_window=T))
    np.testing.assert_array_equal(ref.forward(a, TOKENS), ref.forward(b, TOKENS))
    c = copy.copy(a)
    c.cfg = ref.Config.from_dict(_cfg(num_hidden_layers=layers, stag_sections=p,
                                      stag_shared_weights=shared, stag_cross_window=2))
    assert not np.allclose(ref.forward(a, TOKENS), ref.forward(c, TOKENS))


@pytest.mark.parametrize("p", [2, 3])
def test_output_mix_one_hot_last_equals_no_mix(p):
    plain = _model(num_hidden_layers=2 * p, stag_sections=p)
    mixed_cfg = ref.Config.from_dict(_cfg(num_hidden_layers=2 * p, stag_sections=p,
                                          stag_output_mix=True))
    tensors = dict(plain.w)
    alpha = np.zeros(p)
    alpha[-1] = 1.0
    tensors["model.output_mix.weight"] = alpha
    mixed = ref.Model(mixed_cfg, tensors)
    np.testing.assert_array_equal(ref.forward(mixed, TOKENS), ref.forward(plain, TOKENS))
    tensors["model.output_mix.weight"] = np.full(p, 0.5)
    assert not np.allclose(ref.forward(ref.Model(mixed_cfg, tensors), TOKENS),
                           ref.forward(plain, TOKENS))


@pytest.mark.parametrize("window,mix", [(None, False), (1, True), (3, False)])
def test_recurrent_whole_prompt_equals_forward(window, mix):
    m = _model(stag_shared_weights=True, stag_cross_window=window, stag_output_mix=mix)
    np.testing.assert_array_equal(ref.recurrent(m, TOKENS, len(TOKENS)),
                                  ref.forward(m, TOKENS))


@pytest.mark.parametrize("window", [None, 1, 3])
def test_recurrent_prefix_and_first_step(window):
    m = _model(stag_shared_weights=True, stag_cross_window=window)
    P = 4
    rec = ref.recurrent(m, TOKENS, P)
    fwd = ref.forward(m, TOKENS)
    np.testing.assert_allclose(rec[:P], fwd[:P], rtol=1e-12, atol=1e-12)
    # At i = P every memory key (< P) still comes from section 0 over the prompt, so the
    # first recurrent step equals the two-pass definition at that position (no mix).
    np.testing.assert_allclose(rec[P], fwd[P], rtol=1e-12, atol=1e-12)
    # Later steps read recurrent memory and differ.
    assert not np.allclose(rec[P + 2:], fwd[P + 2:])
    # Causal: a shorter sequence gives the same rows.
    np.testing.assert_allclose(ref.recurrent(m, TOKENS[:8], P), rec[:8], rtol=1e-12,
                               atol=1e-12)


def test_recurrent_memory_is_own_output():
    """Spell out one recurrent step by hand from run_section and memory_from."""
    m = _model(stag_shared_weights=True, stag_cross_window=None)
    P, T = 3, 6
    toks = TOKENS[:T]
    mem = list(ref.memory_from(m, 0, ref.run_section(m, 0, toks[:P])))
    for i in range(P, T):
        out_i = ref.run_section(m, 1, toks[: i + 1], np.array(mem + [np.zeros(16)]))[i]
        mem.append(ref.memory_from(m, 0, out_i[None])[0])
    last = ref.logits_from(m, out_i[None])[0]
    np.testing.assert_allclose(ref.recurrent(m, toks, P)[T - 1], last, rtol=1e-12, atol=1e-12)


def test_recurrent_rejects_other_variants():
    with pytest.raises(ValueError):
        ref.recurrent(_model(), TOKENS, 2)  # separate weights
    with pytest.raises(ValueError):
        ref.recurrent(_model(stag_sections=3, stag_shared_weights=True), TOKENS, 2)


@pytest.mark.parametrize("p,shared,window,mix", [(2, False, None, False), (3, True, 1, True),
                                                 (4, False, 3, True)])
def test_forward_is_causal(p, shared, window, mix):
    m = _model(num_hidden_layers=2 if shared else 2 * p, stag_sections=p,
               stag_shared_weights=shared, stag_cross_window=window, stag_output_mix=mix)
    full = ref.forward(m, TOKENS)
    for k in (1, 2, 5):
        np.testing.assert_allclose(ref.forward(m, TOKENS[:k]), full[:k], rtol=1e-12,
                                   atol=1e-12)


def test_first_position_ignores_cross_attention():
    """Position 0 has no memory keys: with p = 2 separate weights and no mix, its logits are
    those of a p = 1 model made of section 1's layers."""
    m = _model(num_hidden_layers=4, stag_sections=2)
    cfg1 = ref.Config.from_dict(_cfg(num_hidden_layers=2, stag_sections=1))
    t1 = {n: a for n, a in m.w.items() if not n.startswith("model.layers.")}
    for j in range(2):
        for n, a in m.w.items():
            if n.startswith(f"model.layers.{2 + j}."):
                t1[n.replace(f"model.layers.{2 + j}.", f"model.layers.{j}.")] = a
    p1 = ref.Model(cfg1, t1)
    np.testing.assert_allclose(ref.forward(m, TOKENS[:1]), ref.forward(p1, TOKENS[:1]),
                               rtol=1e-12, atol=1e-12)
    assert not np.allclose(ref.forward(m, TOKENS[:3])[1:], ref.forward(p1, TOKENS[:3])[1:])


def test_memory_window_1_reads_only_previous_position():
    """With W = 1 the cross-attention sublayer at position i reads memory i - 1 only."""
    m = _model(stag_cross_window=1)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(6, 16))
    mem = rng.normal(size=(6, 16))
    base = ref.cross_attention(m, 1, 0, x, mem)
    mem2 = mem.copy()
    mem2[2] += 5.0
    changed = ref.cross_attention(m, 1, 0, x, mem2)
    differs = ~np.isclose(base, changed).all(axis=1)
    np.testing.assert_array_equal(differs, [False, False, False, True, False, False])
    assert np.all(base[0] == 0.0)


# ----------------------------------------------------------------------------------------
# Checkpoint I/O
# ----------------------------------------------------------------------------------------


def test_checkpoint_roundtrip_single_and_sharded(tmp_path):
    cfg = _cfg(stag_sections=3, num_hidden_layers=3, stag_output_mix=True,
               tie_word_embeddings=True)
    m1 = ref.write_random_checkpoint(str(tmp_path / "one"), cfg, seed=3)
    m3 = ref.write_random_checkpoint(str(tmp_path / "three"), cfg, seed=3, shards=3)
    assert (tmp_path / "three" / "model-00002-of-00003.safetensors").exists()
    assert (tmp_path / "three" / "model.safetensors.index.json").exists()
    l1 = ref.load_checkpoint(str(tmp_path / "one"))
    l3 = ref.load_checkpoint(str(tmp_path / "three"))
    assert "lm_head.weight" not in ref.read_safetensors(str(tmp_path / "one" /
                                                            "model.safetensors"))
    for n in m1.w:
        np.testing.assert_array_equal(l1.w[n], m1.w[n])
        np.testing.assert_array_equal(l3.w[n], m3.w[n])
    np.testing.assert_array_equal(ref.forward(l1, TOKENS), ref.forward(l3, TOKENS))


def test_safetensors_library_reads_our_f32_files(tmp_path):
    from safetensors.numpy import load_file

    ref.write_random_checkpoint(str(tmp_path), _cfg(), seed=1)
    lib = load_file(str(tmp_path / "model.safetensors"))
    raw = ref.read_safetensors_raw(str(tmp_path / "model.safetensors"))
    assert set(lib) == set(raw)
    for n in lib:
        assert lib[n].dtype == np.float32
        np.testing.assert_array_equal(lib[n], raw[n])


def test_bf16_checkpoint(tmp_path):
    cfg = _cfg(stag_shared_weights=True, stag_cross_window=1)
    m = ref.write_random_checkpoint(str(tmp_path), cfg, seed=2, dtype="bf16")
    hdr = ref.read_safetensors_header(str(tmp_path / "model.safetensors"))
    assert hdr["model.embed_tokens.weight"]["dtype"] == "BF16"
    loaded = ref.load_checkpoint(str(tmp_path))
    f32 = ref.random_tensors(loaded.cfg, 2)
    for n in m.w:
        np.testing.assert_array_equal(loaded.w[n], m.w[n])
        np.testing.assert_array_equal(loaded.w[n], ref.round_to_bf16(f32[n]))
    assert np.max(np.abs(loaded.w["model.embed_tokens.weight"]
                         - f32["model.embed_tokens.weight"])) > 0


def test_f16_checkpoint_via_library(tmp_path):
    from safetensors.numpy import save_file

    cfg = _cfg()
    ref.write_random_checkpoint(str(tmp_path), cfg, seed=4)
    t = ref.read_safetensors(str(tmp_path / "model.safetensors"))
    save_file({n: a.astype(np.float16) for n, a in t.items()},
              str(tmp_path / "model.safetensors"))
    m = ref.load_checkpoint(str(tmp_path))
    np.testing.assert_array_equal(m.w["model.norm.weight"],
                                  t["model.norm.weight"].astype(np.float16).astype(np.float64))


def test_config_defaults():
    cfg = ref.Config.from_dict({"vocab_size": 8, "hidden_size": 8, "intermediate_size": 4,
                                "num_hidden_layers": 1, "num_attention_heads": 2})
    assert cfg.num_key_value_heads == 2 and cfg.head_dim == 4
    assert cfg.rms_norm_eps == 1e-6 and cfg.rope_theta == 10000.0
    assert not cfg.tie_word_embeddings and cfg.stag_sections == 1
    assert not cfg.stag_shared_weights and cfg.stag_cross_window is None
    assert not cfg.stag_output_mix and cfg.layers_per_section == 1
    with pytest.raises(ValueError):
        ref.Config.from_dict(_cfg(num_hidden_layers=3, stag_sections=2))


def test_config_rejects_bad_values():
    with pytest.raises(ValueError):
        ref.Config.from_dict(_cfg(stag_sections=0))
    with pytest.raises(ValueError):
        ref.Config.from_dict(_cfg(stag_cross_window=0))
    with pytest.raises(ValueError):
        ref.Config.from_dict(_cfg(num_key_value_heads=3))
    with pytest.raises(ValueError):
        ref.forward(_model(), [0, 40])
