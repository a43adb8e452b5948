"""The PyTorch module (python/stagformer_torch.py) against the float64 numpy reference.

Every variant of the cross-check matrix plus Mistral's sliding window and the RoPE scalings:
the module's float64 logits equal ``stagformer_ref.forward`` to 1e-9 relative; a batch equals
its rows; a position's logits never depend on later tokens (the staggered masks); a saved
checkpoint loads back into the numpy reference with the same logits (f32) or the bf16-rounded
weights; AdamW steps lower the loss.

Needs torch: `scripts/test` runs this file under the system Python with Debian's
python3-torch and sets STAGFORMER_REQUIRE_TORCH=1, so that a missing torch fails there; run
by hand without torch, the file is skipped with that reason.
"""

import os

import numpy as np
import pytest

if os.environ.get("STAGFORMER_REQUIRE_TORCH") == "1":
    import torch  # noqa: F401  (a missing torch is an error here)
else:
    torch = pytest.importorskip("torch", reason="torch is not installed (scripts/test runs "
                                "this file under the system Python with python3-torch)")

import stagformer_ref as ref
import stagformer_torch as st
from test_cross_check import VARIANTS, _config

TOLERANCE = 1e-9

EXTRA = [
    ("p2-sep-sliding3-gqa", _config(p=2, kv_heads=2, sliding_window=3,
                                    architectures=["MistralForCausalLM"],
                                    model_type="mistral")),
    ("p2-shared-rope-linear", _config(p=2, shared=True,
                                      rope_scaling={"rope_type": "linear", "factor": 4.0})),
    ("p1-rope-llama3", _config(head_dim=8, rope_theta=500000.0, rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": 16,
        "low_freq_factor": 1.0, "high_freq_factor": 4.0})),
    ("p3-sep-rope-dynamic", _config(p=3, window=2, rope_scaling={
        "rope_type": "dynamic", "factor": 2.0})),
]
CASES = [(name, cfg) for name, cfg, _ in VARIANTS] + EXTRA


def _models(cfg_dict, seed):
    cfg = ref.Config.from_dict(cfg_dict)
    tensors = ref.random_tensors(cfg, seed)
    return ref.Model(cfg, tensors), st.from_tensors(cfg, tensors, torch.float64)


def _tokens(cfg, T, seed):
    return np.random.default_rng(seed).integers(0, cfg.vocab_size, size=T)


def _rel(got, want):
    return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


@pytest.mark.parametrize("name,cfg", CASES, ids=[c[0] for c in CASES])
def test_forward_equals_numpy(name, cfg):
    numpy_model, module = _models(cfg, seed=7)
    tokens = _tokens(numpy_model.cfg, 13, seed=3)
    want = ref.forward(numpy_model, tokens)
    with torch.no_grad():
        got = module(torch.from_numpy(tokens)).numpy()
    assert got.shape == want.shape
    assert np.isfinite(got).all()
    assert _rel(got, want) <= TOLERANCE, name


def test_a_batch_equals_its_rows():
    numpy_model, module = _models(_config(p=3, window=2, mix=True, kv_heads=2), seed=1)
    rows = np.stack([_tokens(numpy_model.cfg, 9, seed=s) for s in range(3)])
    with torch.no_grad():
        batch = module(torch.from_numpy(rows)).numpy()
        for b in range(3):
            one = module(torch.from_numpy(rows[b])).numpy()
            assert np.array_equal(batch[b], one) or _rel(batch[b], one) <= 1e-12


@pytest.mark.parametrize("window", [None, 1, 3])
def test_no_position_sees_a_later_token(window):
    numpy_model, module = _models(_config(p=3, window=window), seed=2)
    tokens = _tokens(numpy_model.cfg, 10, seed=4)
    with torch.no_grad():
        base = module(torch.from_numpy(tokens)).numpy()
        for j in range(1, 10):
            changed = tokens.copy()
            changed[j] = (changed[j] + 1) % numpy_model.cfg.vocab_size
            out = module(torch.from_numpy(changed)).numpy()
            assert np.array_equal(out[:j], base[:j]), f"position < {j} saw token {j}"
            assert not np.array_equal(out[j], base[j])


@pytest.mark.parametrize("dtype", ["f32", "bf16"])
def test_a_saved_checkpoint_loads_into_the_reference(tmp_path, dtype):
    cfg = ref.Config.from_dict(_config(p=2, shared=True, window=1, mix=True, tied=True))
    torch.manual_seed(5)
    module = st.StagFormer(cfg).double()
    module.save(str(tmp_path), dtype=dtype)
    loaded = ref.load_checkpoint(str(tmp_path))
    for name, array in module.checkpoint_tensors().items():
        want = ref.round_to_bf16(array) if dtype == "bf16" else array
        assert np.array_equal(loaded[name].astype(np.float32), want), name
    back = st.load(str(tmp_path), torch.float64)
    tokens = _tokens(cfg, 8, seed=6)
    with torch.no_grad():
        got = back(torch.from_numpy(tokens)).numpy()
    assert _rel(got, ref.forward(loaded, tokens)) <= TOLERANCE


def test_load_refuses_a_checkpoint_missing_a_tensor():
    cfg = ref.Config.from_dict(_config(p=2))
    tensors = ref.random_tensors(cfg, 0)
    del tensors["model.cross_layers.1.0.cross_attn.k_proj.weight"]
    with pytest.raises(ValueError, match="missing tensors"):
        st.from_tensors(cfg, tensors)


def test_adamw_steps_lower_the_loss():
    cfg = ref.Config.from_dict(_config(p=2, window=2, mix=True, kv_heads=2))
    torch.manual_seed(0)
    module = st.StagFormer(cfg)
    batch = torch.from_numpy(np.stack([_tokens(cfg, 12, seed=s) for s in range(4)]))
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-2)
    first = float(module.loss(batch))
    for _ in range(30):
        optimizer.zero_grad()
        module.loss(batch).backward()
        optimizer.step()
    last = float(module.loss(batch))
    assert last < 0.5 * first, (first, last)
