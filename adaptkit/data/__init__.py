"""Corpora: reading text/JSONL/HF dataset directories, tokenizing with a cache, packing into blocks."""
