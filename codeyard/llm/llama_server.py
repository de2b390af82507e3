"""llama.cpp's OpenAI-compatible server (`llama_cpp.server`, same arguments) with the weights
kept in plain CPU buffers: `python -m codeyard.llm.llama_server --model ... --port ...`.

Why: on a CPU with AMX (Intel Sapphire Rapids and later) llama.cpp moves the weights into its
AMX "extra buffer type", and its AMX matrix product dies with SIGSEGV (`ldtilecfg` in
`ggml_backend_amx_mul_mat`) on the first decode: llama.cpp issues #20824 and PR #26954 (the
tile permission is requested for the main thread only, and the tile configuration can be
optimised away). llama-cpp-python 0.3.36 built for such a CPU crashes on every completion.
llama.cpp's `use_extra_bufts` model parameter turns those buffer types off, but the Python
wrapper exposes it neither in `Llama` nor in the server's flags, so it is set here on the
default model parameters every `Llama` starts from. Without extra buffer types llama.cpp also
skips weight repacking, which SmolLM2's Q4_1 weights do not use on x86 anyway.
"""

from __future__ import annotations

import importlib
from typing import Any


def plain_cpu_buffers() -> None:
    """Every model loaded afterwards in this process uses no extra buffer type."""
    import llama_cpp.llama_cpp as raw

    defaults = raw.llama_model_default_params
    if not any(name == "use_extra_bufts" for name, *_ in raw.llama_model_params._fields_):
        return  # a llama.cpp from before the field (and before the AMX buffer type)

    def without_extra_buffers() -> Any:
        params = defaults()
        params.use_extra_bufts = False
        return params

    # `Llama.__init__` looks the function up on this module at each call
    raw.llama_model_default_params = without_extra_buffers


def main() -> None:
    plain_cpu_buffers()
    # through import_module: llama_cpp's server `main` is untyped, and mypy may not have llama_cpp
    importlib.import_module("llama_cpp.server.__main__").main()


if __name__ == "__main__":
    main()
