"""The OpenAI-compatible chat-completions API on the gateway (docs/openai.md)."""
