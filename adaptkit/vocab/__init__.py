"""Vocabulary extension for a target language: measure, learn new tokens, grow the embeddings.

- `tokenizer`: load a model's tokenizer as it is, tell its kind, segment text the way its model does.
- `learn`: new BPE tokens and merges learned on top of the old tokenizer's segmentation.
- `stats`: fertility (tokens per word), bytes per token, unknown / partial-character shares.
- `embeddings`: append rows to input embeddings and LM head with an initializer plugin.
- `extend`: the whole `adaptkit vocab extend` step, written as a normal HF model directory.
"""
