"""Checkpoints whose config.json is laid out exactly as Hugging Face transformers 4.x and 5.x
write it (``json.dumps(config, indent=2, sort_keys=True)``, every field those versions emit for
Llama and Mistral), small enough to run: θ = 500000 in both layouts, llama3 / linear / dynamic
RoPE scaling, Mistral's sliding window. Each runs through `stagformer score` on the cpu and on
the emulated kernels, in forward and decode modes, against the float64 numpy reference; and
each fixture must differ from the same weights read the naive way (θ = 10000, no scaling, no
window), so a loader that skips a field fails here.
"""

import json
import os
import subprocess

import numpy as np
import pytest

import stagformer_ref as ref

RUN_TIMEOUT_S = 300
TOLERANCE = {"cpu": 1e-5, "emu": 1e-4}


def _llama_v4(**over):
    """transformers 4.4x `LlamaConfig.save_pretrained` fields, tiny sizes."""
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "head_dim": 8,
        "hidden_act": "silu",
        "hidden_size": 32,
        "initializer_range": 0.02,
        "intermediate_size": 48,
        "max_position_embeddings": 64,
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "num_key_value_heads": 2,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_scaling": None,
        "rope_theta": 500000.0,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "transformers_version": "4.46.2",
        "use_cache": True,
        "vocab_size": 40,
    }
    cfg.update(over)
    return cfg


def _llama_v5(rope_parameters, **over):
    """transformers 5.x: θ and the scaling nested in `rope_parameters`, `dtype`."""
    cfg = _llama_v4(**over)
    for key in ("rope_scaling", "rope_theta", "torch_dtype"):
        cfg.pop(key, None)
    cfg["dtype"] = "float32"
    cfg["pad_token_id"] = None
    cfg["rope_parameters"] = rope_parameters
    cfg["transformers_version"] = "5.0.0"
    return cfg


def _mistral_v4(**over):
    cfg = {
        "architectures": ["MistralForCausalLM"],
        "attention_dropout": 0.0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "head_dim": None,
        "hidden_act": "silu",
        "hidden_size": 32,
        "initializer_range": 0.02,
        "intermediate_size": 48,
        "max_position_embeddings": 64,
        "model_type": "mistral",
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "num_key_value_heads": 1,
        "rms_norm_eps": 1e-05,
        "rope_theta": 10000.0,
        "sliding_window": 4,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "transformers_version": "4.46.2",
        "use_cache": True,
        "vocab_size": 40,
    }
    cfg.update(over)
    return cfg


LLAMA3 = {"factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
          "original_max_position_embeddings": 256}

FIXTURES = {
    "theta500k-v4": _llama_v4(),
    "theta500k-v5": _llama_v5({"rope_theta": 500000.0, "rope_type": "default"}),
    "llama3-v4": _llama_v4(rope_scaling=dict(LLAMA3, rope_type="llama3")),
    "llama3-v5": _llama_v5(dict(LLAMA3, rope_type="llama3", rope_theta=500000.0)),
    "linear-v4-type": _llama_v4(rope_scaling={"factor": 4.0, "type": "linear"}),
    "linear-v5": _llama_v5({"factor": 4.0, "rope_theta": 500000.0, "rope_type": "linear"}),
    "dynamic-v5": _llama_v5({"factor": 2.0, "rope_theta": 500000.0, "rope_type": "dynamic"}),
    "mistral-w4-v4": _mistral_v4(),
    "mistral-w4-v5": _llama_v5({"rope_theta": 10000.0, "rope_type": "default"},
                               architectures=["MistralForCausalLM"], model_type="mistral",
                               sliding_window=4, mlp_bias=None),
}
# Tied models that also store `lm_head.weight` (transformers writes one for some): equal to
# the embedding, or not — transformers ties the head to the embedding either way.
STORED_HEAD = {"tied-head-equal-v4": "equal", "tied-head-differs-v5": "differs"}
FIXTURES["tied-head-equal-v4"] = _llama_v4(tie_word_embeddings=True)
FIXTURES["tied-head-differs-v5"] = _llama_v5({"rope_theta": 500000.0, "rope_type": "default"},
                                             tie_word_embeddings=True)
T = 20
DECODE_PROMPT = 3


def _naive(cfg):
    """The config as a loader that knows only the 4.x top-level Llama fields would read it."""
    return {
        "vocab_size": cfg["vocab_size"], "hidden_size": cfg["hidden_size"],
        "intermediate_size": cfg["intermediate_size"],
        "num_hidden_layers": cfg["num_hidden_layers"],
        "num_attention_heads": cfg["num_attention_heads"],
        "num_key_value_heads": cfg["num_key_value_heads"], "head_dim": cfg.get("head_dim"),
        "rms_norm_eps": cfg["rms_norm_eps"], "max_position_embeddings": 64,
    }


_CACHE = {}


def _fixture(name, tmp_path_factory):
    if name not in _CACHE:
        cfg = FIXTURES[name]
        path = str(tmp_path_factory.mktemp(name))
        seed = sorted(FIXTURES).index(name)
        model = ref.write_random_checkpoint(path, cfg, seed=500 + seed)
        if name in STORED_HEAD:
            tensors = {n: np.asarray(a, dtype=np.float32) for n, a in model.w.items()}
            head = tensors["model.embed_tokens.weight"].copy()
            if STORED_HEAD[name] == "differs":
                head *= 2.0
            tensors["lm_head.weight"] = head
            ref.write_checkpoint(path, cfg, tensors)
        with open(os.path.join(path, "config.json"), "w") as f:
            f.write(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        model = ref.load_checkpoint(path)
        rng = np.random.default_rng(700 + seed)
        tokens = [int(t) for t in rng.integers(0, cfg["vocab_size"], size=T)]
        _CACHE[name] = (path, model, tokens)
    return _CACHE[name]


def _score(binary, path, tokens, device, mode, out_dir):
    out = os.path.join(str(out_dir), f"{device}-{mode}.safetensors")
    cmd = [binary, "score", "--model", path, "--tokens", ",".join(map(str, tokens)),
           "--mode", mode, "--device", device, "--out", out]
    if mode == "decode":
        cmd += ["--prompt-len", str(DECODE_PROMPT)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert proc.returncode == 0, f"{' '.join(cmd)}\nexit {proc.returncode}\n{proc.stderr}"
    return proc.stderr, ref.read_safetensors(out)["logits"].astype(np.float64)


def _rel(a, b):
    return np.max(np.abs(a - b)) / np.max(np.abs(b))


@pytest.mark.parametrize("name", sorted(n for n in FIXTURES if n not in STORED_HEAD))
def test_fixture_reads_differently_from_the_naive_config(name, tmp_path_factory):
    path, model, tokens = _fixture(name, tmp_path_factory)
    want = ref.forward(model, tokens)
    naive = ref.Model(ref.Config.from_dict(_naive(FIXTURES[name])), model.w)
    err = _rel(ref.forward(naive, tokens), want)
    assert err > 1e-3, f"{name}: the config's RoPE/window fields change nothing ({err:.3e})"


def test_dynamic_ntk_within_the_limit_is_the_default_rope(tmp_path_factory):
    """transformers rescales θ for dynamic NTK only past max_position_embeddings."""
    _, model, tokens = _fixture("dynamic-v5", tmp_path_factory)
    default = dict(FIXTURES["dynamic-v5"],
                   rope_parameters={"rope_theta": 500000.0, "rope_type": "default"})
    plain = ref.Model(ref.Config.from_dict(default), model.w)
    assert _rel(ref.forward(plain, tokens), ref.forward(model, tokens)) < 1e-12
    longer = ref.rope_inv_freq(8, 500000.0, {"rope_type": "dynamic", "factor": 2.0}, 64, 128)
    assert not np.allclose(longer, ref.rope_inv_freq(8, 500000.0))


@pytest.mark.parametrize("device", ["cpu", "emu"])
@pytest.mark.parametrize("mode", ["forward", "decode"])
@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_score_matches_numpy(stagformer_bin, name, mode, device, tmp_path_factory, tmp_path):
    path, model, tokens = _fixture(name, tmp_path_factory)
    want = ref.forward(model, tokens)
    stderr, got = _score(stagformer_bin, path, tokens, device, mode, tmp_path)
    warned = "warning:" in stderr and "lm_head" in stderr
    assert warned == (STORED_HEAD.get(name) == "differs"), stderr
    err = _rel(got, want)
    assert err <= TOLERANCE[device], f"{name} {mode} on {device}: relative error {err:.3e}"


def test_both_layouts_of_one_model_give_the_same_logits(stagformer_bin, tmp_path_factory,
                                                       tmp_path):
    for v4, v5 in [("llama3-v4", "llama3-v5"), ("linear-v4-type", "linear-v5"),
                   ("theta500k-v4", "theta500k-v5")]:
        p4, m4, tokens = _fixture(v4, tmp_path_factory)
        p5, m5, _ = _fixture(v5, tmp_path_factory)
        # Same weights under both configs: write the v4 weights beside the v5 config.
        same = str(tmp_path / v5)
        ref.write_checkpoint(same, FIXTURES[v5], {n: np.asarray(a, dtype=np.float32)
                                                  for n, a in m4.w.items()
                                                  if n != "lm_head.weight" or
                                                  not m4.cfg.tie_word_embeddings})
        _, a = _score(stagformer_bin, p4, tokens, "cpu", "forward", tmp_path)
        _, b = _score(stagformer_bin, same, tokens, "cpu", "forward", tmp_path)
        assert np.array_equal(a, b), f"{v4} vs {v5}"


@pytest.mark.parametrize("key,value", [
    ("model_type", "qwen2"), ("attention_bias", True), ("mlp_bias", True),
    ("hidden_act", "gelu"), ("pretraining_tp", 2),
    ("rope_scaling", {"rope_type": "yarn", "factor": 4.0}),
    ("quantization_config", {"quant_method": "awq", "bits": 4}),
    ("rope_theta", 10000.0),  # disagrees with rope_parameters.rope_theta
])
def test_refused_configs_name_the_field(stagformer_bin, tmp_path, key, value):
    # The conflicting θ goes into a 5.x config; every other field into a 4.x one.
    base = FIXTURES["theta500k-v5" if key == "rope_theta" else "theta500k-v4"]
    cfg = dict(base, **{key: value})
    path = str(tmp_path / "m")
    ref.write_random_checkpoint(path, FIXTURES["theta500k-v4"], seed=3)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
    proc = subprocess.run([stagformer_bin, "score", "--model", path, "--tokens", "1,2",
                           "--device", "cpu", "--out", str(tmp_path / "logits.safetensors")],
                          capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert proc.returncode != 0
    assert key in proc.stderr, proc.stderr
    assert not (tmp_path / "logits.safetensors").exists()
