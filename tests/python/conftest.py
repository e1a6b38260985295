"""Shared fixtures of the Python tests: the `tq` command to compare against, and the shared data
(stories260K) the C++ tests read too. What is missing is a skip that says why, never a pass."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _tq_binary():
    env = os.environ.get("TQ_BIN")
    if env:
        return env
    for preset in ("release", "cpu", "debug"):
        p = ROOT / "build" / preset / "apps" / "cli" / "tq"
        if p.exists():
            return str(p)
    return shutil.which("tq")


def _shared_data():
    env = os.environ.get("TQ_SHARED_DATA")
    return Path(env) if env else ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def tq_bin():
    b = _tq_binary()
    if not b:
        pytest.skip("the tq command is not built (cmake --build --preset release, or set TQ_BIN)")
    return b


@pytest.fixture(scope="session")
def run_tq(tq_bin):
    def run(*args, json_out=False):
        r = subprocess.run([tq_bin, *map(str, args)], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, f"tq {' '.join(map(str, args))} failed: {r.stderr}"
        return json.loads(r.stdout) if json_out else r.stdout

    return run


@pytest.fixture(scope="session")
def stories():
    d = _shared_data() / "stories260K"
    model, tok = d / "stories260K.bin", d / "tok512.bin"
    if not model.exists() or not tok.exists():
        pytest.skip(f"stories260K not found under {d.parent} (../shared/data beside the clone, or $TQ_SHARED_DATA)")
    return str(model), str(tok)


@pytest.fixture(scope="session")
def smollm2():
    """SmolLM2-135M (head dim 64, which the GPU kernels take): models/ of the checkout, or $TQ_SMOLLM2."""
    p = Path(os.environ.get("TQ_SMOLLM2", ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    if not p.exists():
        pytest.skip(f"{p} not found (scripts/get_model.sh, or $TQ_SMOLLM2)")
    return str(p)
