#!/usr/bin/env python3
"""Held-out perplexity of a checkpoint written by python/train.py, computed by `stagformer
score` (the Rust reference or the kernels), not by PyTorch.

The held-out windows are the token ids of the checkpoint's heldout.json (train.py writes it),
or, for a directory without one, rebuilt as train.py built them (the same corpus files, the
checkpoint's tokenizer.json, the window length and token count train.json records); each
window is scored by one `stagformer score --mode MODE` run and the next-token log-likelihoods
are summed in float64. Prints one JSON object: tokens, perplexity, and the PyTorch perplexity
train.json recorded with their relative difference.

    python/perplexity.py --model /tmp/stag-p2 --bin target/release/stagformer [--device emu]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import heldout  # noqa: E402
import stagformer_ref as ref  # noqa: E402


def held_out_windows(model_dir: str, record: dict) -> np.ndarray:
    """The evaluated windows [N, context] of `model_dir`."""
    windows = heldout.read(model_dir)
    if windows is not None:
        return windows
    # Rebuilding needs the corpus, the tokenizer and torch (train.py imports it).
    from tokenizers import Tokenizer

    import train

    args = record["arguments"]
    tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    _, held = train.corpus_files(record["corpus"])
    return train.eval_windows(train.encode(tok, held), args["context"], args["eval_tokens"])


def score_nll(binary: str, model_dir: str, window: np.ndarray, mode: str, device: str,
              out: str, prompt_len: int = 1) -> float:
    """Summed −log p of window[1:] given its prefixes, from `stagformer score` logits."""
    tokens = ",".join(str(int(t)) for t in window[:-1])
    cmd = [binary, "score", "-m", model_dir, "-t", tokens, "--mode", mode, "-d", device,
           "-o", out]
    if mode != "forward":
        cmd += ["--prompt-len", str(prompt_len)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} ... failed:\n{proc.stderr[-2000:]}")
    logits = ref.read_safetensors(out)["logits"].astype(np.float64)
    top = logits.max(axis=1, keepdims=True)
    lse = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
    picked = logits[np.arange(len(window) - 1), window[1:]]
    return float((lse - picked).sum())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="checkpoint directory with train.json")
    ap.add_argument("--bin", default="target/release/stagformer", help="the stagformer binary")
    ap.add_argument("--mode", default="forward", choices=["forward", "decode", "recurrent"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--prompt-len", type=int, default=1,
                    help="tokens of each window prefilled before the decode/recurrent steps")
    args = ap.parse_args(argv)
    with open(os.path.join(args.model, "train.json")) as f:
        record = json.load(f)
    windows = held_out_windows(args.model, record)
    nll, count = 0.0, 0
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "logits.safetensors")
        for window in windows:
            nll += score_nll(args.bin, args.model, window, args.mode, args.device, out,
                             args.prompt_len)
            count += len(window) - 1
    ppl = math.exp(nll / count)
    torch_ppl = record.get("held_out_ppl_torch")
    print(json.dumps({
        "model": args.model,
        "mode": args.mode,
        "prompt_len": None if args.mode == "forward" else args.prompt_len,
        "device": args.device,
        "tokens": count,
        "perplexity": ppl,
        "perplexity_torch": torch_ppl,
        "relative_difference": None if torch_ppl is None else abs(ppl - torch_ppl) / torch_ppl,
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
