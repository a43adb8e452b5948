#!/usr/bin/env python3
"""Ships a checkpoint trained by python/train.py as `models/<name>/`: the weights re-stored in
bf16 (or f32), tokenizer.json, heldout.json, a train.json whose `held_out_ppl_torch` is the
PyTorch perplexity of the weights as stored (bf16-rounded where bf16), and the model card
README.md. `stagformer score` must reproduce that perplexity (python/tests/test_shipped_models.py).

    .venv-torch/bin/python python/export_model.py --run /tmp/quality/p2-960-s0 \\
        --out models/stagformer-p2-docs --title "StagFormer p = 2 × 2 on the Python docs" \\
        --row p2-960
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import heldout  # noqa: E402
import stagformer_torch as st  # noqa: E402
import train  # noqa: E402
from tokenizers import Tokenizer, processors  # noqa: E402

CARD = """# {title}

A small {kind} trained from scratch on CPU by `python/train.py` of this repository, shipped
so that the decoders run trained weights (real text, outlier activations) rather than random
ones. It is a demonstration and test model, not a useful language model: {params:,}
parameters, trained on {tokens:,} tokens.

| | |
|---|---|
| architecture | {arch} |
| shape | hidden {hidden}, {heads} heads of {head_dim}, MLP {inter}, vocabulary {vocab}, context {context} |
| weights | {dtype} (`model.safetensors`, {size:.1f} MB) |
| tokenizer | byte-level BPE trained by `tokenizers` on the training files (`tokenizer.json`; `<\\|endoftext\\|>` = id 0 is BOS and EOS) |
| data | the reStructuredText sources of the Python 3.11 documentation (Debian `python3.11-doc`, `/usr/share/doc/python3.11/html/_sources`); every 20th file (sorted by path) held out |
| training | {steps} AdamW steps (β = 0.9, 0.95, weight decay 0.1), batch {batch} × {context} tokens, peak lr {lr}, {warmup} warm-up steps then cosine to 10 %, seed {seed}, gradient clip 1.0 |
| held-out perplexity | **{ppl:.3f}** of {predicted:,} held-out tokens ({windows} windows of {context}, `heldout.json`; each window's first token is context only), weights as stored; {ppl_f32:.3f} before rounding to {dtype} |

Reproduce the number with `stagformer score` (what CI checks, to 0.5 %):

```sh
.venv/bin/python python/perplexity.py --model {path} --bin target/release/stagformer
```

Generate:

```sh
cargo run --release -p stagformer-cli -- generate --model {path} --prompt "The list type" --max-new-tokens 48
```

Retrain: `python/quality.py train` (run `{row}` of `docs/results/quality.md`, seed {seed}), then
`python/export_model.py`. Licence: the training text is © Python Software Foundation
under the PSF License Version 2 (code examples under the Zero-Clause BSD licence;
`/usr/share/doc/python3.11/copyright`); these weights are derived from it and are released
under the same terms. `train.json` records every argument and the training log.
"""


def describe(cfg) -> str:
    p = cfg.stag_sections
    if p == 1:
        return ("decoder-only transformer (a StagFormer with one section), "
                f"{cfg.num_hidden_layers} layers")
    words = [f"StagFormer, p = {p} sections of {cfg.layers_per_section} layers",
             "shared weights" if cfg.stag_shared_weights else "separate weights",
             "unbounded cross-attention" if cfg.stag_cross_window is None
             else f"cross window W = {cfg.stag_cross_window}"]
    if cfg.stag_output_mix:
        words.append("learned output mix")
    return ", ".join(words)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="a directory train.py wrote")
    ap.add_argument("--out", required=True, help="models/<name>")
    ap.add_argument("--title", required=True)
    ap.add_argument("--row", help="its row of the quality table", default="")
    ap.add_argument("--dtype", choices=["bf16", "f32"], default="bf16")
    args = ap.parse_args(argv)

    with open(os.path.join(args.run, "train.json")) as f:
        record = json.load(f)
    windows = heldout.read(args.run)
    if windows is None:
        raise SystemExit(f"{args.run}: no {heldout.FILE}")
    module = st.load(args.run)
    tok = Tokenizer.from_file(os.path.join(args.run, "tokenizer.json"))
    eot = tok.token_to_id(train.EOT)
    os.makedirs(args.out, exist_ok=True)
    module.save(args.out, dtype=args.dtype, extra_config={"bos_token_id": eot, "eos_token_id": eot})
    # Training windows follow <|endoftext|> at each document's start; a prompt gets it as BOS
    # (`encode(text, add_special_tokens=True)`, what `stagformer generate --prompt` does).
    tok.post_processor = processors.TemplateProcessing(
        single=f"{train.EOT} $A", special_tokens=[(train.EOT, eot)])
    tok.save(os.path.join(args.out, "tokenizer.json"))
    heldout.write(args.out, windows)
    stored = st.load(args.out)
    ppl_f32 = record["held_out_ppl_torch"]
    record["held_out_ppl_torch_f32"] = ppl_f32
    record["held_out_ppl_torch"] = train.perplexity(stored, windows)
    record["stored_dtype"] = args.dtype
    with open(os.path.join(args.out, "train.json"), "w") as f:
        json.dump(record, f, indent=2)
        f.write("\n")

    cfg = stored.cfg
    a = record["arguments"]
    with open(os.path.join(args.out, "README.md"), "w") as f:
        f.write(CARD.format(
            title=args.title, kind="baseline transformer" if cfg.stag_sections == 1
            else "StagFormer", params=record["parameters"], tokens=record["trained_tokens"],
            arch=describe(cfg), hidden=cfg.hidden_size, heads=cfg.num_attention_heads,
            head_dim=cfg.head_dim, inter=cfg.intermediate_size, vocab=cfg.vocab_size,
            context=a["context"], dtype=args.dtype,
            size=os.path.getsize(os.path.join(args.out, "model.safetensors")) / 1e6,
            steps=a["steps"], batch=a["batch"], lr=a["lr"], warmup=a["warmup"], seed=a["seed"],
            ppl=record["held_out_ppl_torch"], ppl_f32=ppl_f32,
            predicted=len(windows) * (windows.shape[1] - 1), windows=len(windows),
            path=args.out.rstrip("/"),
            row=args.row or os.path.basename(args.run.rstrip("/"))))
    print(json.dumps({"out": args.out, "held_out_ppl_torch": record["held_out_ppl_torch"],
                      "held_out_ppl_torch_f32": ppl_f32}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
