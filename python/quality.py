#!/usr/bin/env python3
"""The quality table (docs/results/quality.md): trains every row of it with python/train.py
under one budget and two seeds, scores each checkpoint's held-out windows with `stagformer
score` (not PyTorch) and writes the table with the PyTorch perplexity beside each number.

Every row sees the same tokenizer, the same training windows (a seed draws them), the same
number of steps, batch and context; rows differ only in the model. Sections hold `--layers`
layers each, as in the paper's 2 × 18 StagFormer against 18- and 36-layer baselines; the
p = 3 and p = 4 rows hold one layer per section, so they are as deep as the 2·Ls baseline
(or one layer less).

    .venv-torch/bin/python python/quality.py train --out /tmp/quality --jobs 2
    .venv-torch/bin/python python/quality.py table --out /tmp/quality \\
        --bin target/release/stagformer

`table` prints the markdown tables; docs/results/quality.md holds them with the setup and what
they show.

`train` skips a run whose directory already holds train.json, so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))

# name: (description, train.py arguments, score mode). A row without arguments re-scores the
# checkpoints of the row named in its mode tuple (recurrent inference needs no training).
ROWS: List[tuple] = [
    ("baseline-L2", "baseline, Ls = 2 layers", ["--sections", "1", "--layers", "2"], None),
    ("baseline-L4", "baseline, 2·Ls = 4 layers", ["--sections", "1", "--layers", "4"], None),
    ("p2", "StagFormer p = 2 × 2, separate weights", ["--sections", "2", "--layers", "2"], None),
    ("p2-shared", "p = 2 × 2, shared weights", ["--sections", "2", "--layers", "2",
                                                "--shared"], None),
    ("p2-shared-recurrent", "p = 2 × 2 shared, recurrent inference after a 32-token prompt",
     None, ("p2-shared", "recurrent")),
    ("p2-w1", "p = 2 × 2, cross window W = 1", ["--sections", "2", "--layers", "2",
                                                "--window", "1"], None),
    ("p2-w16", "p = 2 × 2, cross window W = 16", ["--sections", "2", "--layers", "2",
                                                  "--window", "16"], None),
    ("p3", "p = 3 × 1", ["--sections", "3", "--layers", "1"], None),
    ("p3-mix", "p = 3 × 1, output mix", ["--sections", "3", "--layers", "1", "--mix"], None),
    ("p4", "p = 4 × 1", ["--sections", "4", "--layers", "1"], None),
    ("p4-mix", "p = 4 × 1, output mix", ["--sections", "4", "--layers", "1", "--mix"], None),
]

# The budget every row shares.
BUDGET = ["--hidden", "128", "--heads", "4", "--context", "128", "--batch", "16",
          "--steps", "240", "--warmup", "24", "--lr", "3e-3", "--eval-tokens", "16384",
          "--eval-every", "80"]
SEEDS = [0, 1]

# The shipped checkpoints: the 4-layer baseline and p = 2 under four times the steps, seed 0.
LONG_STEPS = 960
LONG_ROWS = ["baseline-L4", "p2"]


def run_dir(out: str, name: str, seed: int) -> str:
    return os.path.join(out, f"{name}-s{seed}")


def long_name(name: str) -> str:
    return f"{name}-{LONG_STEPS}"


def train_one(out: str, tokenizer: str, name: str, args: List[str], seed: int,
              threads: int) -> str:
    target = run_dir(out, name, seed)
    if os.path.exists(os.path.join(target, "train.json")):
        return f"{name} seed {seed}: already trained"
    cmd = [sys.executable, os.path.join(HERE, "train.py"), "--out", target, "--tokenizer",
           tokenizer, "--seed", str(seed), "--threads", str(threads), *BUDGET, *args]
    if name.endswith(f"-{LONG_STEPS}"):
        # argparse keeps the last --steps/--warmup given.
        cmd += ["--steps", str(LONG_STEPS), "--warmup", str(LONG_STEPS // 10)]
    with open(os.path.join(out, f"{name}-s{seed}.log"), "w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed (log: {log.name})")
    return f"{name} seed {seed}: trained"


def train(args) -> int:
    os.makedirs(args.out, exist_ok=True)
    tokenizer = args.tokenizer
    if tokenizer is None:
        # One tokenizer for every row: trained once by a short run of the first row.
        tokenizer = os.path.join(args.out, "tokenizer.json")
        if not os.path.exists(tokenizer):
            import train as trainer

            files, _ = trainer.corpus_files(trainer.CORPUS)
            trainer.train_tokenizer(files, args.vocab).save(tokenizer)
    jobs = []
    if args.set in ("table", "all"):
        jobs += [(name, a, seed) for name, _, a, _ in ROWS if a is not None for seed in SEEDS]
    if args.set in ("long", "all"):
        jobs += [(long_name(name), a, 0) for name, _, a, _ in ROWS if name in LONG_ROWS]
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    with ThreadPoolExecutor(args.jobs) as pool:
        for line in pool.map(lambda j: train_one(args.out, tokenizer, j[0], j[1], j[2],
                                                 threads), jobs):
            print(line, file=sys.stderr)
    return 0


# Recurrent inference: positions before it run both sections as in forward, later ones section 1
# alone (docs/MODEL.md, "Recurrent mode").
RECURRENT_PROMPT = 32


def score_run(binary: str, model_dir: str, mode: str) -> float:
    cmd = [sys.executable, os.path.join(HERE, "perplexity.py"), "--model", model_dir, "--bin",
           binary, "--mode", mode, "--prompt-len", str(RECURRENT_PROMPT)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout)["perplexity"]


def spread(values: List[float]) -> str:
    mean = sum(values) / len(values)
    return f"{mean:.2f} ± {(max(values) - min(values)) / 2:.2f}"


def table(args) -> int:
    lines = []
    header = ("| row | model | parameters | seeds | held-out ppl (`stagformer score`) | "
              "per seed | PyTorch ppl per seed |")
    lines += [header, "|" + "---|" * 7]
    results: Dict[str, dict] = {}
    for name, desc, train_args, rescore in ROWS:
        source, mode = rescore if rescore else (name, "forward")
        per_seed, torch_seed, params = [], [], None
        for seed in SEEDS:
            d = run_dir(args.out, source, seed)
            with open(os.path.join(d, "train.json")) as f:
                record = json.load(f)
            params = record["parameters"]
            per_seed.append(score_run(args.bin, d, mode))
            torch_seed.append(record["held_out_ppl_torch"] if mode == "forward" else None)
        results[name] = {"ppl": per_seed, "torch": torch_seed, "parameters": params,
                         "mode": mode}
        torch_text = " / ".join("—" if t is None else f"{t:.3f}" for t in torch_seed)
        lines.append(f"| {name} | {desc} | {params / 1e6:.2f} M | {len(SEEDS)} | "
                     f"{spread(per_seed)} | {' / '.join(f'{p:.3f}' for p in per_seed)} | "
                     f"{torch_text} |")
        print(lines[-1], file=sys.stderr)
    lines += ["", f"Longer runs ({LONG_STEPS} steps, seed 0; the shipped models):", "",
              "| run | held-out ppl (`stagformer score`) | PyTorch ppl |", "|---|---|---|"]
    for name in LONG_ROWS:
        d = run_dir(args.out, long_name(name), 0)
        if not os.path.exists(os.path.join(d, "train.json")):
            continue
        with open(os.path.join(d, "train.json")) as f:
            record = json.load(f)
        ppl = score_run(args.bin, d, "forward")
        results[long_name(name)] = {"ppl": [ppl], "torch": [record["held_out_ppl_torch"]],
                                    "parameters": record["parameters"], "mode": "forward"}
        lines.append(f"| {long_name(name)} | {ppl:.3f} | {record['held_out_ppl_torch']:.3f} |")
    print("\n".join(lines))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train every row and seed")
    t.add_argument("--out", required=True)
    t.add_argument("--tokenizer", help="tokenizer.json for every row (default: train one)")
    t.add_argument("--vocab", type=int, default=2048)
    t.add_argument("--jobs", type=int, default=2, help="runs at once")
    t.add_argument("--set", choices=["table", "long", "all"], default="all",
                   help=f"the table's runs, the {LONG_STEPS}-step runs, or both")
    s = sub.add_parser("table", help="score every checkpoint and print the table (markdown)")
    s.add_argument("--out", required=True)
    s.add_argument("--bin", default="target/release/stagformer")
    s.add_argument("--json", help="also write the numbers here")
    args = ap.parse_args(argv)
    return train(args) if args.command == "train" else table(args)


if __name__ == "__main__":
    sys.exit(main())
