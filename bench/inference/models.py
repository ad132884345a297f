"""The model under test: the embedded SmolLM2 by default, or a randomly initialised model at a real shape (GPU runs,
which have no network: nothing is downloaded, the embedded tokenizer stands in since the ids are random anyway)."""

from __future__ import annotations

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from services.common import model_store
from services.inference.engine import Engine, EngineConfig

RANDOM_CONFIGS = {
    "llama3-8b": {
        "vocab_size": 128256,
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "max_position_embeddings": 131072,
        "rope_theta": 500000.0,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False,
    },
    # The embedded model's shape: its timings without its weights (for machines that do not hold the converted copy).
    "smollm2-135m": {
        "vocab_size": 49152,
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "head_dim": 64,
        "max_position_embeddings": 8192,
        "rope_theta": 100000.0,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": True,
    },
    # A small Llama for checking the random-config path itself on a CPU.
    "llama-tiny": {
        "vocab_size": 49152,
        "hidden_size": 256,
        "intermediate_size": 512,
        "num_hidden_layers": 4,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
        "head_dim": 32,
        "max_position_embeddings": 16384,
    },
}


def build_engine(device: str, dtype: str, threads: int | None, random_config: str | None) -> Engine:
    config = EngineConfig(device=device, dtype=dtype, threads=threads)
    if random_config is None:
        return Engine(config)
    if random_config not in RANDOM_CONFIGS:
        raise SystemExit(f"--random-config: {random_config!r} is not one of {', '.join(RANDOM_CONFIGS)}")
    torch.manual_seed(0)
    llama = LlamaConfig(**RANDOM_CONFIGS[random_config])
    previous = torch.get_default_dtype()
    torch.set_default_dtype(config.torch_dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(llama)
    finally:
        torch.set_default_dtype(previous)
    model.config._name_or_path = f"random {random_config}"
    tokenizer = AutoTokenizer.from_pretrained(str(model_store.default_model_path()))
    return Engine(config, model=model, tokenizer=tokenizer)
