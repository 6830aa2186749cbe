"""Input/output: atomic writes, model and tokenizer loading, safetensors helpers, run cards."""
