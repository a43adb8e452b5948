"""Cross-check of the Rust `stagformer` command against the float64 numpy reference.

Each variant writes a small random checkpoint, runs `stagformer score` once per mode and
compares the logits: max|rust - numpy| / max|numpy| <= 1e-5. The binary comes from
$STAGFORMER_BIN, or is built with `cargo build -p stagformer-cli` (see conftest.py).
$STAGFORMER_DEVICE picks the `--device` (default cpu).
"""

import json
import os
import subprocess

import numpy as np
import pytest

import stagformer_ref as ref

TOLERANCE = 1e-5
RUN_TIMEOUT_S = 120
DEVICE = os.environ.get("STAGFORMER_DEVICE", "cpu")


def _config(p=1, shared=False, window=None, mix=False, kv_heads=4, tied=False, ls=2,
            **extra):
    cfg = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
        "vocab_size": 48, "hidden_size": 16, "intermediate_size": 24,
        "num_hidden_layers": ls if shared else ls * p,
        "num_attention_heads": 4, "num_key_value_heads": kv_heads,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 64,
        "tie_word_embeddings": tied,
        "stag_sections": p, "stag_shared_weights": shared, "stag_cross_window": window,
        "stag_output_mix": mix,
    }
    cfg.update(extra)
    return cfg


def _plain_llama_config():
    """A Hugging Face Llama config.json with no stag_* keys and defaults left out."""
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 40,
        "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2,
        "num_attention_heads": 2, "max_position_embeddings": 32,
    }


# id, config, options (dtype, shards, decode prompt length, recurrent prompt length, T)
VARIANTS = [
    ("p1-llama-defaults", _plain_llama_config(), dict(T=9)),
    ("p1-gqa-tied-hd8", _config(kv_heads=2, tied=True, head_dim=8, rope_theta=500.0),
     dict(T=10, decode_prompt=4)),
    ("p2-sep-full-mha", _config(p=2), dict(T=9)),
    ("p2-sep-w1-gqa-tied", _config(p=2, window=1, kv_heads=2, tied=True),
     dict(T=11, decode_prompt=3)),
    ("p2-sep-w3-mix-gqa", _config(p=2, window=3, mix=True, kv_heads=2), dict(T=12)),
    ("p2-shared-full-gqa", _config(p=2, shared=True, kv_heads=2),
     dict(T=10, recurrent_prompt=3)),
    ("p2-shared-w1-mix-mha", _config(p=2, shared=True, window=1, mix=True),
     dict(T=11, decode_prompt=5, recurrent_prompt=1)),
    ("p2-shared-w3-tied-gqa", _config(p=2, shared=True, window=3, tied=True, kv_heads=1,
                                      rms_norm_eps=1e-6, rope_theta=1000.0),
     dict(T=12, recurrent_prompt=4)),
    ("p3-sep-w3-mix-gqa", _config(p=3, window=3, mix=True, kv_heads=2), dict(T=10)),
    ("p3-shared-full-mha", _config(p=3, shared=True), dict(T=9, decode_prompt=2)),
    ("p3-shared-w1-mix-tied-gqa", _config(p=3, shared=True, window=1, mix=True, tied=True,
                                          kv_heads=2), dict(T=11)),
    ("p3-sep-w1-hd8-gqa", _config(p=3, window=1, kv_heads=2, head_dim=8, ls=1), dict(T=10)),
    ("p4-sep-full-mix-gqa-tied", _config(p=4, mix=True, kv_heads=2, tied=True, ls=1),
     dict(T=12)),
    ("p4-shared-w3-mha", _config(p=4, shared=True, window=3), dict(T=10, decode_prompt=3)),
    ("p4-sep-w1-mha", _config(p=4, window=1, ls=1), dict(T=9)),
    ("p2-sep-w3-gqa-sharded", _config(p=2, window=3, kv_heads=2), dict(T=10, shards=3)),
    ("p2-shared-w1-mix-bf16", _config(p=2, shared=True, window=1, mix=True, kv_heads=2),
     dict(T=11, dtype="bf16", recurrent_prompt=4, decode_prompt=2)),
]
IDS = [v[0] for v in VARIANTS]
RECURRENT = [v[0] for v in VARIANTS if "recurrent_prompt" in v[2]]
NOT_RECURRENT = ["p1-llama-defaults", "p2-sep-full-mha", "p3-shared-full-mha",
                 "p4-sep-w1-mha"]
assert all(
    not (v[1].get("stag_shared_weights") and v[1].get("stag_sections") == 2)
    for v in VARIANTS if v[0] in NOT_RECURRENT
)
assert all(v[1].get("stag_shared_weights") and v[1].get("stag_sections") == 2
           for v in VARIANTS if v[0] in RECURRENT)


class Checkpoint:
    def __init__(self, path, model, tokens, opts):
        self.path = path
        self.model = model
        self.tokens = tokens
        self.opts = opts


_CACHE = {}


@pytest.fixture
def checkpoint(request, tmp_path_factory):
    """Write (once per session) the random checkpoint of the variant named by the param."""
    name = request.param
    if name not in _CACHE:
        index = IDS.index(name)
        _, cfg, opts = VARIANTS[index]
        path = str(tmp_path_factory.mktemp(name))
        ref.write_random_checkpoint(path, cfg, seed=100 + index,
                                    dtype=opts.get("dtype", "f32"),
                                    shards=opts.get("shards", 1))
        model = ref.load_checkpoint(path)  # for bf16: the bf16-rounded weights
        rng = np.random.default_rng(1000 + index)
        tokens = [int(t) for t in rng.integers(0, model.cfg.vocab_size, size=opts["T"])]
        _CACHE[name] = Checkpoint(path, model, tokens, opts)
    return _CACHE[name]


def run_score(binary, ckpt, mode, out_dir, prompt_len=None, check=True):
    out = os.path.join(str(out_dir), f"logits-{mode}.safetensors")
    cmd = [binary, "score", "--model", ckpt.path,
           "--tokens", ",".join(str(t) for t in ckpt.tokens),
           "--mode", mode, "--device", DEVICE, "--out", out]
    if prompt_len is not None:
        cmd += ["--prompt-len", str(prompt_len)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    if not check:
        return proc, None
    assert proc.returncode == 0, (
        f"{' '.join(cmd)}\nexit {proc.returncode}\nstdout:\n{proc.stdout}\n"
        f"stderr:\n{proc.stderr}")
    return proc, read_logits(out, len(ckpt.tokens), ckpt.model.cfg.vocab_size)


def read_logits(path, T, V):
    header = ref.read_safetensors_header(path)
    assert header["logits"]["dtype"] == "F32", header["logits"]
    logits = ref.read_safetensors(path)["logits"]
    assert logits.shape == (T, V)
    return logits.astype(np.float64)


def assert_close(got, want, what):
    err = np.max(np.abs(got - want)) / np.max(np.abs(want))
    worst = np.unravel_index(np.argmax(np.abs(got - want)), want.shape)
    assert err <= TOLERANCE, (
        f"{what}: relative max error {err:.3e} > {TOLERANCE:g} (worst at position "
        f"{worst[0]}, token id {worst[1]}: rust {got[worst]:.7g}, numpy {want[worst]:.7g})")


@pytest.mark.parametrize("checkpoint", IDS, indirect=True)
def test_score_forward(stagformer_bin, checkpoint, tmp_path):
    _, got = run_score(stagformer_bin, checkpoint, "forward", tmp_path)
    assert_close(got, ref.forward(checkpoint.model, checkpoint.tokens), "forward")


@pytest.mark.parametrize("checkpoint", IDS, indirect=True)
def test_score_decode(stagformer_bin, checkpoint, tmp_path):
    # Decode (prefill P, then one token at a time) must give the forward logits.
    prompt = checkpoint.opts.get("decode_prompt")  # None: the command's default (1)
    _, got = run_score(stagformer_bin, checkpoint, "decode", tmp_path, prompt_len=prompt)
    assert_close(got, ref.forward(checkpoint.model, checkpoint.tokens),
                 f"decode (prompt {prompt or 'default'})")


@pytest.mark.parametrize("checkpoint", ["p2-sep-w1-gqa-tied", "p3-sep-w3-mix-gqa"],
                         indirect=True)
def test_score_decode_whole_prompt(stagformer_bin, checkpoint, tmp_path):
    T = len(checkpoint.tokens)
    _, got = run_score(stagformer_bin, checkpoint, "decode", tmp_path, prompt_len=T)
    assert_close(got, ref.forward(checkpoint.model, checkpoint.tokens), "decode (prompt T)")


@pytest.mark.parametrize("checkpoint", RECURRENT, indirect=True)
def test_score_recurrent(stagformer_bin, checkpoint, tmp_path):
    P = checkpoint.opts["recurrent_prompt"]
    _, got = run_score(stagformer_bin, checkpoint, "recurrent", tmp_path, prompt_len=P)
    want = ref.recurrent(checkpoint.model, checkpoint.tokens, P)
    assert_close(got, want, f"recurrent (prompt {P})")
    # And recurrent really differs from the two-pass definition after the first step.
    fwd = ref.forward(checkpoint.model, checkpoint.tokens)
    assert not np.allclose(want[P + 1:], fwd[P + 1:], rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("checkpoint", NOT_RECURRENT, indirect=True)
def test_score_recurrent_rejected(stagformer_bin, checkpoint, tmp_path):
    proc, _ = run_score(stagformer_bin, checkpoint, "recurrent", tmp_path, prompt_len=2,
                        check=False)
    text = (proc.stderr + proc.stdout).lower()
    assert proc.returncode != 0, "recurrent mode must be refused for this variant"
    assert "panicked" not in text, proc.stderr
    assert "recurrent" in text or "shared" in text, (
        f"the error should say why recurrent mode is refused:\n{proc.stderr}")


@pytest.mark.parametrize("checkpoint", ["p2-sep-full-mha"], indirect=True)
@pytest.mark.parametrize("prompt", [0, "T+1"])
def test_score_decode_bad_prompt_len_rejected(stagformer_bin, checkpoint, tmp_path, prompt):
    P = len(checkpoint.tokens) + 1 if prompt == "T+1" else prompt
    proc, _ = run_score(stagformer_bin, checkpoint, "decode", tmp_path, prompt_len=P,
                        check=False)
    assert proc.returncode != 0, f"--prompt-len {P} must be refused"
    assert "panicked" not in (proc.stderr + proc.stdout).lower(), proc.stderr


@pytest.mark.parametrize("name,cfg", [
    ("init-p2-shared-w3-mix-gqa",
     _config(p=2, shared=True, window=3, mix=True, kv_heads=2)),
    ("init-p3-sep-tied", _config(p=3, tied=True, ls=1)),
])
def test_init_checkpoint_matches_forward(stagformer_bin, tmp_path, name, cfg):
    cfg_file = tmp_path / "config.json"
    cfg_file.write_text(json.dumps(cfg))
    out_dir = tmp_path / "ckpt"
    cmd = [stagformer_bin, "init", "--config", str(cfg_file), "--seed", "7",
           "--out", str(out_dir)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stderr}"
    model = ref.load_checkpoint(str(out_dir))  # checks every tensor name and shape
    for key in ("stag_sections", "stag_shared_weights", "stag_cross_window",
                "stag_output_mix", "num_key_value_heads", "tie_word_embeddings"):
        assert getattr(model.cfg, key) == cfg[key], key
    for n, a in model.w.items():
        assert np.all(np.isfinite(a)), n
    assert np.std(model.w["model.embed_tokens.weight"]) > 0
    tokens = [5, 17, 3, 29, 0, 11, 38, 7, 22, 13]
    ckpt = Checkpoint(str(out_dir), model, tokens, {})
    _, got = run_score(stagformer_bin, ckpt, "forward", tmp_path)
    assert_close(got, ref.forward(model, tokens), "forward on an init checkpoint")
