#!/usr/bin/env python3
"""Trains a small StagFormer (or a baseline, p = 1) on the CPU and writes a checkpoint that
`stagformer score` and `stagformer generate` run (config.json, model.safetensors,
tokenizer.json, train.json).

Corpus: the reStructuredText sources of the Python 3.11 documentation, as Debian's
`python3.11-doc` package installs them (/usr/share/doc/python3.11/html/_sources, about 500
files, 12 MB of English prose and code; PSF License Version 2, examples under the Zero-Clause
BSD licence: /usr/share/doc/python3.11/copyright). Every 20th file (sorted by path) is held
out, so no held-out text is trained on.

Tokenizer: byte-level BPE trained by the `tokenizers` library on the training files only
(`--vocab` ids, `<|endoftext|>` = id 0 separating documents, as BOS and EOS); a run given
`--tokenizer FILE` reuses one, so that models compared in one table see the same tokens.

Training: AdamW (β = 0.9, 0.95; weight decay 0.1 on matrices), linear warm-up then cosine decay
to 10 % of the peak rate, batches of random windows of `--context` + 1 tokens drawn with
`--seed`, gradient clipping at 1.0. The held-out perplexity is computed over the first
`--eval-tokens` held-out tokens in non-overlapping windows of `--context` (every token after
the window's first is predicted); train.json records them with the result, and heldout.json
holds the evaluated windows' token ids.

    python/train.py --out /tmp/stag-p2 --sections 2 --layers 2 --hidden 128 --steps 2000
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import List, Tuple

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import heldout  # noqa: E402
import stagformer_ref as ref  # noqa: E402
import stagformer_torch as st  # noqa: E402

CORPUS = "/usr/share/doc/python3.11/html/_sources"
EOT = "<|endoftext|>"
HELD_OUT_EVERY = 20


def corpus_files(root: str) -> Tuple[List[str], List[str]]:
    """The corpus's text files, sorted: (training files, held-out files)."""
    paths = []
    for dirpath, _, names in os.walk(root):
        paths += [os.path.join(dirpath, n) for n in names if n.endswith(".txt")]
    paths.sort()
    if not paths:
        raise SystemExit(f"{root}: no .txt files (Debian: apt-get install python3.11-doc)")
    held = [p for i, p in enumerate(paths) if i % HELD_OUT_EVERY == 0]
    train = [p for i, p in enumerate(paths) if i % HELD_OUT_EVERY != 0]
    return train, held


def read(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def train_tokenizer(files: List[str], vocab: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=[EOT],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train(files, trainer)
    return tok


def encode(tok, files: List[str]) -> np.ndarray:
    """Every file's ids, each document preceded by <|endoftext|>, as one int64 array."""
    eot = tok.token_to_id(EOT)
    ids: List[int] = []
    for enc in tok.encode_batch([read(p) for p in files]):
        ids.append(eot)
        ids += enc.ids
    return np.asarray(ids, dtype=np.int64)


def eval_windows(ids: np.ndarray, context: int, tokens: int) -> np.ndarray:
    """Non-overlapping windows [N, context] over the first `tokens` held-out ids."""
    n = min(tokens, len(ids)) // context
    return ids[: n * context].reshape(n, context)


@torch.no_grad()
def perplexity(module: st.StagFormer, windows: np.ndarray, batch: int = 16) -> float:
    module.eval()
    total, count = 0.0, 0
    for i in range(0, len(windows), batch):
        chunk = torch.from_numpy(windows[i : i + batch])
        logits = module(chunk[:, :-1]).double()
        lp = torch.log_softmax(logits, dim=-1)
        total -= float(lp.gather(-1, chunk[:, 1:, None]).sum())
        count += chunk[:, 1:].numel()
    module.train()
    return math.exp(total / count)


def learning_rate(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def config_for(args, vocab: int) -> ref.Config:
    layers = args.layers if args.shared else args.layers * args.sections
    return ref.Config.from_dict({
        "vocab_size": vocab,
        "hidden_size": args.hidden,
        "intermediate_size": args.intermediate or 4 * args.hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": args.heads,
        "num_key_value_heads": args.kv_heads or args.heads,
        "max_position_embeddings": args.context,
        "tie_word_embeddings": args.tied,
        "stag_sections": args.sections,
        "stag_shared_weights": args.shared,
        "stag_cross_window": args.window,
        "stag_output_mix": args.mix,
    })


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="checkpoint directory to write")
    ap.add_argument("--corpus", default=CORPUS)
    ap.add_argument("--tokenizer", help="reuse this tokenizer.json instead of training one")
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--sections", type=int, default=2, help="p (1: a baseline)")
    ap.add_argument("--layers", type=int, default=2, help="layers per section")
    ap.add_argument("--shared", action="store_true", help="one layer stack for every section")
    ap.add_argument("--window", type=int, help="cross-attention window W (default: unbounded)")
    ap.add_argument("--mix", action="store_true", help="learned output mix of the sections")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--intermediate", type=int, help="MLP width (default 4 x hidden)")
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int)
    ap.add_argument("--tied", action="store_true", help="tie the embedding and lm_head")
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-tokens", type=int, default=65536)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--dtype", choices=["f32", "bf16"], default="f32", help="stored weights")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args(argv)

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    train_files, held_files = corpus_files(args.corpus)
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(args.tokenizer) if args.tokenizer else \
        train_tokenizer(train_files, args.vocab)
    vocab = tok.get_vocab_size(with_added_tokens=True)
    train_ids, held_ids = encode(tok, train_files), encode(tok, held_files)
    windows = eval_windows(held_ids, args.context, args.eval_tokens)
    print(f"corpus: {len(train_files)} training files ({len(train_ids)} tokens), "
          f"{len(held_files)} held out ({len(held_ids)} tokens; {windows.size} evaluated)",
          file=sys.stderr)

    cfg = config_for(args, vocab)
    module = st.StagFormer(cfg)
    params = sum(p.numel() for p in module.parameters())
    decay = [p for p in module.parameters() if p.dim() >= 2]
    no_decay = [p for p in module.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=args.lr, betas=(0.9, 0.95))
    rng = np.random.default_rng(args.seed)
    span = args.context + 1
    log = []
    start = time.time()
    for step in range(args.steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args.steps, args.lr, args.warmup)
        offsets = rng.integers(0, len(train_ids) - span, size=args.batch)
        batch = torch.from_numpy(np.stack([train_ids[o : o + span] for o in offsets]))
        loss = module.loss(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        optimizer.step()
        last = step + 1 == args.steps
        if (step + 1) % args.eval_every == 0 or last:
            ppl = perplexity(module, windows)
            log.append({"step": step + 1, "train_loss": float(loss), "held_out_ppl": ppl,
                        "seconds": round(time.time() - start, 1)})
            print(f"step {step + 1}: loss {float(loss):.3f}, held-out ppl {ppl:.2f} "
                  f"({time.time() - start:.0f} s)", file=sys.stderr)

    os.makedirs(args.out, exist_ok=True)
    module.save(args.out, dtype=args.dtype, extra_config={"bos_token_id": 0, "eos_token_id": 0})
    tok.save(os.path.join(args.out, "tokenizer.json"))
    # The held-out perplexity of the stored weights (bf16-rounded when stored as bf16).
    stored = st.load(args.out)
    record = {
        "corpus": args.corpus,
        "held_out_every": HELD_OUT_EVERY,
        "arguments": vars(args),
        "parameters": params,
        "trained_tokens": args.steps * args.batch * args.context,
        "eval_tokens": int(windows.size),
        "held_out_ppl_torch": perplexity(stored, windows),
        "log": log,
    }
    with open(os.path.join(args.out, "train.json"), "w") as f:
        json.dump(record, f, indent=2)
    heldout.write(args.out, windows)
    print(json.dumps({"held_out_ppl_torch": record["held_out_ppl_torch"],
                      "parameters": params}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
