"""Inference benchmark: our engine with and without attention capture against the original tool's approach (a full
forward with `output_attentions` per step, no KV cache) and transformers `generate(output_attentions=True)`, plus
in-place pruning against a re-prefill. Run `python -m bench.inference [--quick]`."""
