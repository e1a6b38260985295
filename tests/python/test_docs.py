"""Runs every ```python block of docs/python.md, in order, in one namespace, from the repository
root: the examples stay runnable. Blocks marked "# needs: stories260K", "SmolLM2", "cuda" or
"transformers" are skipped, saying why, where that is missing."""

import contextlib
import io
import re

import pytest

from conftest import ROOT, _shared_data

DOC = ROOT / "docs" / "python.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
NAMESPACE: dict = {}


def _cuda_ready():
    try:
        import torch

        import turboquant

        return turboquant.HAVE_CUDA and torch.cuda.is_available()
    except ImportError:
        return False


def _transformers_ready():
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401

        return True
    except ImportError:
        return False


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_doc_block(index, monkeypatch):
    code = BLOCKS[index]
    if "# needs: stories260K" in code:
        data = _shared_data()
        if not (data / "stories260K" / "stories260K.bin").exists():
            pytest.skip(f"docs/python.md block {index + 1} needs stories260K under {data}")
        code = code.replace("../shared/data", str(data))
    if "# needs: SmolLM2" in code and not (ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf").exists():
        pytest.skip(f"docs/python.md block {index + 1} needs models/SmolLM2-135M-Instruct.Q4_1.gguf (scripts/get_model.sh)")
    if "# needs: cuda" in code and not _cuda_ready():
        pytest.skip(f"docs/python.md block {index + 1} needs torch, a CUDA build and a GPU")
    if "# needs: transformers" in code and not _transformers_ready():
        pytest.skip(f"docs/python.md block {index + 1} needs torch and transformers (tests/python/requirements-torch.txt)")
    monkeypatch.chdir(ROOT)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, f"docs/python.md block {index + 1}", "exec"), NAMESPACE)
    assert out.getvalue().strip(), f"block {index + 1} printed nothing"
