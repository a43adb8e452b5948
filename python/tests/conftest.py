"""Shared pytest fixtures: import path for the numpy reference and the Rust binary."""

import os
import subprocess
import sys

import pytest

PYTHON_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO_ROOT = os.path.dirname(PYTHON_DIR)
if PYTHON_DIR not in sys.path:
    sys.path.insert(0, PYTHON_DIR)


def _resolve_binary() -> str:
    env = os.environ.get("STAGFORMER_BIN")
    if env:
        if os.path.isabs(env) or os.path.exists(env):
            return os.path.abspath(env)
        return os.path.join(REPO_ROOT, env)
    proc = subprocess.run(["cargo", "build", "-q", "-p", "stagformer-cli"], cwd=REPO_ROOT,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail("cargo build -p stagformer-cli failed:\n" + proc.stderr[-4000:])
    return os.path.join(REPO_ROOT, "target", "debug", "stagformer")


@pytest.fixture(scope="session")
def stagformer_bin() -> str:
    path = _resolve_binary()
    if not os.path.isfile(path):
        pytest.fail(f"stagformer binary not found at {path}")
    return path
