"""The kernel decoder (`stagformer score --device emu|cuda`) against the float64 numpy reference.

For a matrix of small random models (p 1-4, separate and shared weights, windows, output mix,
GQA, tied embeddings) it scores a token sequence with a short prompt and one decode step per
remaining token, in every execution mode that applies, with step graphs and with --no-graph:

* f32 activations: max|got - want| / max|want| <= 1e-4 against the numpy forward logits
  (recurrent mode against the numpy recurrent logits);
* bf16 activations on bf16-stored weights: normalised MSE <= 5e-4 (the bound of the Rust
  decoder tests; bf16 stores round every activation to 8 bits of mantissa).

One line per run; exit status 1 if any run fails. Needs only numpy. On a GPU machine:

    python3 python/decoder_check.py --bin gpu-bundle/bin/stagformer --device cuda
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import stagformer_ref as ref  # noqa: E402

F32_TOLERANCE = 1e-4
BF16_NMSE = 5e-4
RUN_TIMEOUT_S = 300


def config(p=1, shared=False, window=None, mix=False, kv_heads=4, tied=False, ls=2, **extra):
    cfg = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
        "vocab_size": 48, "hidden_size": 32, "intermediate_size": 48,
        "num_hidden_layers": ls if shared else ls * p, "num_attention_heads": 4,
        "num_key_value_heads": kv_heads, "head_dim": 8, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "max_position_embeddings": 64, "tie_word_embeddings": tied,
        "stag_sections": p, "stag_shared_weights": shared, "stag_cross_window": window,
        "stag_output_mix": mix,
    }
    cfg.update(extra)
    return cfg


# Mistral's sliding window (ring self caches, chunked prefill) with llama3 RoPE scaling.
MISTRAL = dict(architectures=["MistralForCausalLM"], model_type="mistral", sliding_window=4,
               rope_theta=500000.0,
               rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": 256})


# name, config, storage dtype
VARIANTS = [
    ("p1-gqa-tied", config(kv_heads=2, tied=True), "f32"),
    ("p2-sep", config(p=2), "f32"),
    ("p2-sep-w1-gqa-tied", config(p=2, window=1, kv_heads=2, tied=True), "f32"),
    ("p2-shared-w3-mix-gqa", config(p=2, shared=True, window=3, mix=True, kv_heads=2), "f32"),
    ("p3-sep-w3-mix-gqa", config(p=3, window=3, mix=True, kv_heads=2), "f32"),
    ("p3-shared-tied", config(p=3, shared=True, tied=True), "f32"),
    ("p4-sep-mix-gqa-tied", config(p=4, mix=True, kv_heads=2, tied=True, ls=1), "f32"),
    ("p4-shared-w1", config(p=4, shared=True, window=1), "f32"),
    ("p2-sep-w3-mix-bf16", config(p=2, window=3, mix=True, kv_heads=2), "bf16"),
    ("p2-shared-w1-bf16", config(p=2, shared=True, window=1, kv_heads=2), "bf16"),
    ("p1-mistral-w4-llama3", config(kv_heads=2, **MISTRAL), "f32"),
    ("p2-sep-w3-sliding4-llama3-bf16", config(p=2, window=3, kv_heads=2, **MISTRAL), "bf16"),
]
QUICK = {"p2-sep-w1-gqa-tied", "p2-shared-w3-mix-gqa", "p2-sep-w3-mix-bf16",
         "p1-mistral-w4-llama3"}
TOKENS = 20
PROMPT = 3


def runs_for(cfg, storage):
    """(score mode, --schedule, graphs) of every run that applies to the model."""
    shared, p = cfg["stag_shared_weights"], cfg["stag_sections"]
    execs = ["sequential", "staggered"] + (["batched"] if shared or p == 1 else []) + ["grouped"]
    runs = [("decode", e, g) for e in execs for g in (True, False)]
    if shared and p == 2 and storage == "f32":
        runs += [("recurrent", "sequential", True), ("recurrent", "sequential", False)]
    return runs


def score(binary, device, model_dir, tokens, mode, exec_mode, graphs, dtype, out):
    cmd = [binary, "score", "--model", model_dir, "--tokens", ",".join(map(str, tokens)),
           "--mode", mode, "--prompt-len", str(PROMPT), "--device", device,
           "--schedule", exec_mode, "--dtype", dtype, "--out", out]
    if not graphs:
        cmd.append("--no-graph")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {proc.returncode}\n{proc.stderr[-2000:]}")
    return ref.read_safetensors(out)["logits"].astype(np.float64)


def compare(got, want, dtype):
    """(metric name, value, bound, passed)."""
    if not np.all(np.isfinite(got)):
        return "non-finite", float("nan"), 0.0, False
    if dtype == "f32":
        err = float(np.max(np.abs(got - want)) / np.max(np.abs(want)))
        return "rel max err", err, F32_TOLERANCE, err <= F32_TOLERANCE
    nmse = float(np.sum((got - want) ** 2) / np.sum(want ** 2))
    return "nmse", nmse, BF16_NMSE, nmse <= BF16_NMSE


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", required=True, help="the stagformer binary")
    ap.add_argument("--device", default="cuda", choices=["cuda", "emu", "cpu"])
    ap.add_argument("--quick", action="store_true", help=f"only {sorted(QUICK)}")
    args = ap.parse_args(argv)
    failures = 0
    rows = 0
    with tempfile.TemporaryDirectory() as tmp:
        for index, (name, cfg, storage) in enumerate(VARIANTS):
            if args.quick and name not in QUICK:
                continue
            model_dir = os.path.join(tmp, name)
            model = ref.write_random_checkpoint(model_dir, cfg, seed=500 + index, dtype=storage)
            rng = np.random.default_rng(900 + index)
            tokens = [int(t) for t in rng.integers(0, cfg["vocab_size"], size=TOKENS)]
            wants = {"decode": ref.forward(model, tokens)}
            for mode, exec_mode, graphs in runs_for(cfg, storage):
                if mode not in wants:
                    wants[mode] = ref.recurrent(model, tokens, PROMPT)
                what = f"{name:<22} {mode:<9} {exec_mode:<10} graphs {'on ' if graphs else 'off'}"
                start = time.monotonic()
                try:
                    got = score(args.bin, args.device, model_dir, tokens, mode, exec_mode,
                                graphs, storage, os.path.join(tmp, "logits.safetensors"))
                except (RuntimeError, subprocess.TimeoutExpired) as e:
                    print(f"FAIL {what}: {e}", flush=True)
                    failures += 1
                    continue
                metric, value, bound, ok = compare(got, wants[mode], storage)
                rows += 1
                failures += 0 if ok else 1
                print(f"{'ok  ' if ok else 'FAIL'} {what} {storage}: {metric} {value:.2e} "
                      f"(bound {bound:g}, {time.monotonic() - start:.1f}s)", flush=True)
    print(f"decoder check on {args.device}: {rows} runs compared, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
