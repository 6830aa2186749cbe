"""Importance scoring (SSU step 1) and masks from scores (SSU step 2).

A scorer (plugin kind "scorer", see adaptkit/plugins/scorers/) gives every entry of a
scored parameter an importance s_ij >= 0. Scores are stored compactly, per unit of the
mask granularity the SSU paper uses: for a 2-D weight (out, in) the column score
S_j = sum_i s_ij (length `in`) and the row score R_i = sum_j s_ij (length `out`), and
element scores only on request; 1-D parameters (norm weights, biases) are always
scored element-wise.

One module per job:
- `parameters`: which parameters are scored (found structurally);
- `statistics`: the hooked calibration forward pass and its float32 input statistics;
- `scorer`: the `Scorer` base class of plugins and `scorer_spec`;
- `score_set`: a set of scores in memory and on disk (`scores.safetensors`, format in
  `adaptkit.io.mask_files`);
- `run`: `compute_scores`, over the whole model or one decoder layer at a time;
- `freeze`: from scores to masks (the top-k units of every parameter are frozen).
This package imports nothing at import time; import the submodule you need.
"""
