"""The held-out windows a trained checkpoint was evaluated on, kept beside it as token ids
(``heldout.json``: ``{"context": T, "windows": [[id, ...], ...]}``), so its perplexity can be
recomputed from the checkpoint directory alone, without the corpus or the tokenizer."""

from __future__ import annotations

import json
import os
from typing import Optional

import numpy as np

FILE = "heldout.json"


def write(model_dir: str, windows: np.ndarray) -> None:
    """Writes ``windows`` [N, T] to ``model_dir``/heldout.json."""
    with open(os.path.join(model_dir, FILE), "w") as f:
        json.dump({"context": int(windows.shape[1]),
                   "windows": [[int(t) for t in w] for w in windows]}, f, separators=(",", ":"))
        f.write("\n")


def read(model_dir: str) -> Optional[np.ndarray]:
    """The windows [N, T] of ``model_dir``/heldout.json, ``None`` where there is no such file."""
    path = os.path.join(model_dir, FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        held = json.load(f)
    windows = np.asarray(held["windows"], dtype=np.int64)
    if windows.ndim != 2 or windows.shape[1] != held["context"] or len(windows) == 0:
        raise ValueError(f"{path}: windows are not a non-empty [N, {held['context']}] list")
    return windows
