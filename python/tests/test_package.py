"""The `stagformer` Python package (crates/stagformer-py) against the float64 numpy reference.

Every call of the package runs on the CPU reference ("cpu") and on the emulated CUDA kernels
("emu"): load, config, score in each mode, generate, tokenize/detokenize, the batch decoder
(add, prefill, step with logits and with sampling, remove, fork, a stale id) and init; errors
raise ValueError for bad requests and stagformer.Error for the rest. Weights are random and
drawn afresh from each test's seed, so no expected value is written down here.
"""

import json
import os

import numpy as np
import pytest

import stagformer_ref as ref

try:
    import stagformer
except ImportError as e:
    # scripts/test builds and installs the package first and sets this, so that a package
    # that did not install fails the run instead of skipping it.
    if os.environ.get("STAGFORMER_REQUIRE_PACKAGE") == "1":
        raise ImportError(f"STAGFORMER_REQUIRE_PACKAGE=1 but the stagformer package does not "
                          f"import: {e}") from e
    pytest.skip("the stagformer package is not installed (build it with maturin develop -m "
                "crates/stagformer-py/Cargo.toml; scripts/test does)", allow_module_level=True)

DEVICES = ["cpu", "emu"]
# The cross-check's tolerances: the cpu reference computes in f32, the emulated kernels too
# but in another order (max|got - want| / max|want|).
TOLERANCE = {"cpu": 1e-5, "emu": 1e-4}


def _config(shared=False, p=2, vocab=40):
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
        "vocab_size": vocab, "hidden_size": 16, "intermediate_size": 24,
        "num_hidden_layers": 2 if shared else 2 * p,
        "num_attention_heads": 4, "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 32,
        "tie_word_embeddings": False,
        "stag_sections": p, "stag_shared_weights": shared,
    }


@pytest.fixture(scope="module", params=[False, True], ids=["separate", "shared"])
def ckpt(request, tmp_path_factory):
    """A random checkpoint written by stagformer.init, with its numpy model."""
    path = tmp_path_factory.mktemp("pkg")
    seed = int(np.random.default_rng().integers(1 << 31))
    stagformer.init(str(path), config=_config(shared=request.param), seed=seed)
    return str(path), ref.load_checkpoint(str(path))


def _tokens(model, n, rng=None):
    rng = rng or np.random.default_rng()
    return [int(t) for t in rng.integers(0, model.cfg.vocab_size, n)]


def assert_close(got, want, device, what):
    assert got.dtype == np.float32 and got.shape == want.shape, (what, got.shape, want.shape)
    assert np.all(np.isfinite(got)), f"{what}: non-finite logits"
    err = np.max(np.abs(got - want)) / np.max(np.abs(want))
    assert err <= TOLERANCE[device], f"{what}: relative max error {err:.3e}"


@pytest.mark.parametrize("device", DEVICES)
def test_load_and_config(ckpt, device):
    path, _ = ckpt
    m = stagformer.load(path, device=device)
    with open(os.path.join(path, "config.json")) as f:
        assert m.config == json.load(f)
    assert isinstance(m.device, str) and m.warnings == []


@pytest.mark.parametrize("device", DEVICES)
def test_score_every_mode(ckpt, device):
    path, model = ckpt
    m = stagformer.load(path, device=device)
    tokens = _tokens(model, 9)
    want = ref.forward(model, tokens)
    assert_close(m.score(tokens), want, device, "forward")
    for prompt_len in (1, 4, 9):
        got = m.score(tokens, mode="decode", prompt_len=prompt_len)
        assert_close(got, want, device, f"decode, prompt_len {prompt_len}")
    if model.cfg.stag_shared_weights:
        got = m.score(tokens, mode="recurrent", prompt_len=3)
        assert_close(got, ref.recurrent(model, tokens, 3), device, "recurrent")
    else:
        with pytest.raises(ValueError, match="recurrent"):
            m.score(tokens, mode="recurrent", prompt_len=3)


@pytest.mark.parametrize("device", DEVICES)
def test_generate_greedy_follows_the_reference(ckpt, device):
    path, model = ckpt
    m = stagformer.load(path, device=device)
    prompt = _tokens(model, 3)
    out = m.generate(prompt, max_new_tokens=6)
    assert len(out) == 6
    seq = list(prompt)
    for tok in out:
        logits = ref.forward(model, seq)[-1]
        # Greedy: the reference's argmax, unless the top two are too close to call in f32.
        top = np.sort(logits)[-2:]
        if top[1] - top[0] > 1e-4 * np.max(np.abs(logits)):
            assert tok == int(np.argmax(logits))
        seq.append(tok)


def test_generate_sampled_is_the_same_on_every_device(ckpt):
    path, model = ckpt
    prompt = _tokens(model, 4)
    kw = dict(max_new_tokens=8, temperature=0.9, top_k=10, top_p=0.95, seed=7)
    outs = [stagformer.load(path, device=d).generate(prompt, **kw) for d in DEVICES]
    assert outs[0] == outs[1]
    assert all(0 <= t < model.cfg.vocab_size for t in outs[0])
    m = stagformer.load(path, device="cpu")
    assert m.generate(prompt, **kw) == outs[0]
    # The positions run out: 32 positions, a prompt of 30 leaves 2.
    assert len(m.generate(_tokens(model, 30), max_new_tokens=10)) == 2
    # eos: generation stops after the first eos token generated.
    first = m.generate(prompt, max_new_tokens=1)[0]
    assert m.generate(prompt, max_new_tokens=8, eos=[first]) == [first]


@pytest.mark.parametrize("device", DEVICES)
def test_decoder_batch_against_the_reference(ckpt, device):
    path, model = ckpt
    m = stagformer.load(path, device=device)
    rng = np.random.default_rng()
    d = m.decoder(max_batch=3, capacity=16)
    assert d.vocab_size == model.cfg.vocab_size
    a_seq, b_seq = _tokens(model, 3, rng), _tokens(model, 5, rng)
    a = d.add(a_seq)
    b, b_logits = d.prefill(b_seq)
    assert_close(b_logits, ref.forward(model, b_seq), device, "prefill")
    assert d.seq_len(a) == 3 and d.seq_len(b) == 5
    for step in range(3):
        toks = _tokens(model, 2, rng)
        got = d.step([a, b], toks)
        a_seq.append(toks[0])
        b_seq.append(toks[1])
        want = np.stack([ref.forward(model, a_seq)[-1], ref.forward(model, b_seq)[-1]])
        assert_close(got, want, device, f"step {step}")
    # Sampling in the step: greedy rows are the argmax of the logits the step would give.
    toks = _tokens(model, 2, rng)
    picked = d.step([a, b], toks, sampling=[{"temperature": 0.0}, {"temperature": 0.0}])
    for seq, tok, p in ((a_seq, toks[0], picked[0]), (b_seq, toks[1], picked[1])):
        seq.append(tok)
        logits = ref.forward(model, seq)[-1]
        top = np.sort(logits)[-2:]
        if top[1] - top[0] > 1e-4 * np.max(np.abs(logits)):
            assert p == int(np.argmax(logits))
    sampled = d.step([a], [1], sampling={"temperature": 1.0, "seed": 3})
    assert len(sampled) == 1 and 0 <= sampled[0] < model.cfg.vocab_size
    d.remove(a)
    # A stale id is refused, even once its slot holds another sequence.
    c = d.add(_tokens(model, 2, rng))
    assert c != a
    with pytest.raises(ValueError, match="removed"):
        d.step([a], [1])
    with pytest.raises(ValueError, match="removed"):
        d.remove(a)
    with pytest.raises(ValueError, match="unknown sequence id"):
        d.seq_len(12345)
    if device == "cpu":
        with pytest.raises(ValueError, match="fork"):
            d.fork(b)
    else:
        f = d.fork(b)
        toks = [2, 2]
        got = d.step([b, f], toks)
        assert_close(got[1:], got[:1], device, "fork")


def test_sampled_steps_agree_between_devices(ckpt):
    path, model = ckpt
    prompt = _tokens(model, 4)
    outs = []
    for device in DEVICES:
        d = stagformer.load(path, device=device).decoder(max_batch=2, capacity=8)
        s = d.add(prompt)
        outs.append(d.step([s], [5], sampling={"temperature": 0.8, "top_k": 5, "seed": 11}))
    assert outs[0] == outs[1]


@pytest.mark.parametrize("device", DEVICES)
def test_bad_requests_raise_value_error(ckpt, device):
    path, model = ckpt
    m = stagformer.load(path, device=device)
    V = model.cfg.vocab_size
    with pytest.raises(ValueError, match="out of range"):
        m.score([V])
    with pytest.raises(ValueError, match="prompt"):
        m.score([1, 2], mode="decode", prompt_len=3)
    with pytest.raises(ValueError, match="mode"):
        m.score([1], mode="sideways")
    with pytest.raises(ValueError, match="top_p"):
        m.generate([1], top_p=0.0)
    with pytest.raises(ValueError, match="temperature"):
        m.generate([1], temperature=-1.0)
    d = m.decoder(max_batch=1, capacity=4)
    s = d.add([1])
    with pytest.raises(ValueError):
        d.add([1])  # the batch is full
    with pytest.raises(ValueError):
        d.step([s], [1, 2])  # ids and tokens differ in number
    with pytest.raises(ValueError, match="sampling"):
        d.step([s], [1], sampling={"heat": 1.0})
    for _ in range(3):
        d.step([s], [1])
    with pytest.raises(ValueError):
        d.step([s], [1])  # past the capacity
    with pytest.raises(ValueError, match="device"):
        stagformer.load(path, device="tpu")
    with pytest.raises(ValueError, match="dtype"):
        stagformer.load(path, device=device, dtype="f8")


def test_other_failures_raise_stagformer_error(ckpt, tmp_path):
    path, _ = ckpt
    assert issubclass(stagformer.Error, Exception)
    assert not issubclass(stagformer.Error, ValueError)
    with pytest.raises(stagformer.Error, match="loading"):
        stagformer.load(str(tmp_path / "missing"), device="cpu")
    m = stagformer.load(path, device="cpu")
    with pytest.raises(stagformer.Error, match="tokenizer.json"):
        m.tokenize("a b")


def _write_tokenizer(path, words):
    tok = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": [],
        "normalizer": None, "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": None, "decoder": None,
        "model": {"type": "WordLevel", "vocab": {w: i for i, w in enumerate(words)},
                  "unk_token": words[0]},
    }
    with open(os.path.join(path, "tokenizer.json"), "w") as f:
        json.dump(tok, f)


@pytest.mark.parametrize("device", DEVICES)
def test_tokenize_and_detokenize(tmp_path, device):
    stagformer.init(str(tmp_path), config=_config(), seed=2)
    words = ["<unk>"] + [f"w{i}" for i in range(1, 40)]
    _write_tokenizer(str(tmp_path), words)
    m = stagformer.load(str(tmp_path), device=device)
    ids = m.tokenize("w3 w17 w3 zz")
    assert ids == [3, 17, 3, 0]
    assert m.detokenize([5, 6]) == "w5 w6"
    # Text in, text out: the generated ids decode through the same tokenizer.
    out = m.generate(ids, max_new_tokens=3)
    assert m.detokenize(out) == " ".join(words[i] for i in out)


def test_init_presets_dtypes_and_errors(tmp_path):
    stagformer.init(str(tmp_path / "tiny"), preset="tiny", seed=1, dtype="bf16")
    model = ref.load_checkpoint(str(tmp_path / "tiny"))
    m = stagformer.load(str(tmp_path / "tiny"), device="cpu")
    assert m.config["vocab_size"] == model.cfg.vocab_size
    tokens = _tokens(model, 5)
    assert_close(m.score(tokens), ref.forward(model, tokens), "cpu", "tiny bf16")
    with pytest.raises(ValueError, match="unknown preset"):
        stagformer.init(str(tmp_path / "x"), preset="huge")
    with pytest.raises(ValueError, match="not both"):
        stagformer.init(str(tmp_path / "x"), preset="tiny", config=_config())
    with pytest.raises(ValueError, match="dtype"):
        stagformer.init(str(tmp_path / "x"), preset="tiny", dtype="f64")
    with pytest.raises(ValueError):
        stagformer.init(str(tmp_path / "x"), config=dict(_config(), hidden_size=15))


def test_generate_stops_at_the_model_eos(tmp_path):
    stagformer.init(str(tmp_path), config=_config(), seed=4)
    prompt = [1, 2, 3]
    free = stagformer.load(str(tmp_path), device="cpu")
    assert free.eos_token_ids == []
    full = free.generate(prompt, max_new_tokens=5)
    assert len(full) == 5
    # generation_config.json's eos_token_id ends generation by default; eos=[] ignores it.
    with open(tmp_path / "generation_config.json", "w") as f:
        json.dump({"eos_token_id": [full[1]]}, f)
    for device in DEVICES:
        m = stagformer.load(str(tmp_path), device=device)
        assert m.eos_token_ids == [full[1]]
        assert m.generate(prompt, max_new_tokens=5) == full[:full.index(full[1]) + 1]
        assert m.generate(prompt, max_new_tokens=5, eos=[]) == full


@pytest.mark.parametrize("device", DEVICES)
def test_decoder_capacity_is_bounded_by_the_model(ckpt, device):
    path, model = ckpt
    d = stagformer.load(path, device=device).decoder(max_batch=2, capacity=1024)
    assert d.capacity == model.cfg.max_position_embeddings
    s = d.add(_tokens(model, d.capacity - 1))
    d.step([s], [1])
    with pytest.raises(ValueError):
        d.step([s], [1])  # every position used


def test_error_messages_are_the_cli_messages(ckpt, stagformer_bin, tmp_path):
    import subprocess

    path, model = ckpt
    m = stagformer.load(path, device="cpu")
    bad = model.cfg.vocab_size + 3
    with pytest.raises(ValueError) as err:
        m.score([1, bad])
    proc = subprocess.run([stagformer_bin, "score", "-m", path, "-d", "cpu", "-t", f"1,{bad}",
                           "-o", str(tmp_path / "x.safetensors")], capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"error: {err.value}"
    missing = str(tmp_path / "missing")
    with pytest.raises(stagformer.Error) as err:
        stagformer.load(missing, device="cpu")
    proc = subprocess.run([stagformer_bin, "score", "-m", missing, "-d", "cpu", "-t", "1",
                           "-o", str(tmp_path / "y.safetensors")], capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"error: {err.value}"


def test_every_python_visible_item_has_a_docstring():
    assert stagformer.__doc__ and stagformer.__version__
    for name in ("load", "init", "Error", "Model", "Decoder"):
        assert getattr(stagformer, name).__doc__, name
    for cls in (stagformer.Model, stagformer.Decoder):
        for name, item in vars(cls).items():
            if not name.startswith("_"):
                assert item.__doc__, f"{cls.__name__}.{name}"


def test_one_model_from_many_threads(ckpt):
    # The calls release the GIL; a Model is immutable and shared by the threads.
    import threading

    path, model = ckpt
    m = stagformer.load(path, device="emu")
    prompts = [_tokens(model, 3) for _ in range(4)]
    want = [m.generate(p, max_new_tokens=4) for p in prompts]
    got = [None] * len(prompts)

    def run(i):
        got[i] = m.generate(prompts[i], max_new_tokens=4)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == want
