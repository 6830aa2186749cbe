"""The merge toolbox: per-tensor merge methods run by one streaming executor.

- `base`: the `MergeMethod` contract (a small self-describing class with a per-tensor
  function), `TensorContext` (layer index, seeded generator, auxiliary tensors) and the
  shared parameter types. Light at import: plugin modules build their specs from it.
- `stream`: out-of-core safetensors reading (positional reads, no mmap) and writing
  (header planned up front, tensors appended one at a time).
- `executor`: aligns N model directories, validates them, runs a method tensor by tensor
  and writes a normal Hugging Face model directory with a merge card.
- `ops`: the tensor operations the methods share (top-k trimming, sign election, DARE
  drop, SLERP, unit masks).
- `mergekit_config`: reads mergekit's YAML for the methods both tools share.
- `instruct`: instruction residuals (chat vectors): extract once, apply with any alpha.
"""
