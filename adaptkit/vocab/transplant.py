"""`vocab transplant` as a library call: give a model another tokenizer, initialising the rows it lacks.

Every token of the new tokenizer that the old vocabulary has keeps its input-embedding and LM-head
rows exactly (moved to its new id). A token the old vocabulary lacks gets its rows
- from an initializer plugin (`--init subword-mean`, the default, as `vocab extend` does: the mean
  of the old rows of the old tokens that spell it, FVT; or `mean`, `random`), which needs both
  tokenizers of one BPE kind so that a vocabulary string means the same bytes to both; or
- by orthogonal matching pursuit (`--init omp`, as mergekit's tokensurgeon): when the new
  tokenizer's directory also holds a model (a donor whose embeddings index the new vocabulary),
  each new token's donor row is approximated by at most k donor rows of shared tokens, chosen
  greedily by OMP with the coefficients refitted by least squares at every step, and the same
  coefficients combine the old model's rows of those shared tokens. Input embeddings and an
  untied head are approximated separately (from the donor's embeddings and head).
Ids no token uses (padding rows) get the old matrix's mean row. The output is a normal model
directory with the new tokenizer and `adaptkit_vocab.json` (the new tokens' ids: training with
`train_embeddings=new-only` updates those rows only).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from adaptkit.errors import InputError
from adaptkit.vocab import tokenizer as tok

OMP = "omp"


@dataclass
class TransplantOptions:
    model: str
    tokenizer: Path
    output: Path
    init: str = "subword-mean"
    k: int = 8
    seed: int = 0
    overwrite: bool = False


def omp(targets: Any, atoms: Any, k: int, chunk: int = 1024) -> tuple[Any, Any]:
    """Orthogonal matching pursuit: per target row, k atom indices chosen greedily (largest |<residual, atom>|,
    no atom twice) and their least-squares coefficients over the chosen atoms. (B, k) indices and coefficients."""
    import torch

    indices, coefficients = [], []
    for start in range(0, targets.shape[0], chunk):
        target = targets[start:start + chunk].double()
        pool = atoms.double()
        residual = target.clone()
        chosen = torch.zeros(target.shape[0], 0, dtype=torch.long)
        rows = torch.arange(target.shape[0])
        for _ in range(min(k, atoms.shape[0])):
            scores = (residual @ pool.T).abs()
            scores[rows.unsqueeze(1), chosen] = -1.0
            chosen = torch.cat([chosen, scores.argmax(dim=1, keepdim=True)], dim=1)
            basis = pool[chosen]  # (B, t, D)
            coeffs = torch.linalg.lstsq(basis.transpose(1, 2), target.unsqueeze(-1)).solution.squeeze(-1)
            residual = target - torch.bmm(coeffs.unsqueeze(1), basis).squeeze(1)
        indices.append(chosen)
        coefficients.append(coeffs)
    return torch.cat(indices), torch.cat(coefficients)


def _load_tokenizers(opts: TransplantOptions) -> tuple[Any, Any, Any]:
    from adaptkit.io.models import ModelSource, resolve_model_source

    source = resolve_model_source(opts.model)
    new_dir = Path(opts.tokenizer)
    if not new_dir.is_dir():
        raise InputError(f"--tokenizer: '{new_dir}' is not a directory with tokenizer files")
    old = tok.load_tokenizer_as_is(source)
    new = tok.load_tokenizer_as_is(ModelSource("dir", str(new_dir), "--tokenizer"))
    return source, old, new


def _check(opts: TransplantOptions, old: Any, new: Any) -> None:
    if opts.k < 1:
        raise InputError(f"--k: expected a positive number of shared tokens per new token, got {opts.k}")
    if opts.init == OMP:
        if not (Path(opts.tokenizer) / "config.json").is_file():
            raise InputError(f"--init omp: '{opts.tokenizer}' holds no model (config.json and weights); OMP expresses a new token "
                             "over shared tokens in a donor model's embeddings: give a model directory, or --init subword-mean")
        return
    from adaptkit.vocab.initializers import load_initializer

    try:
        load_initializer(opts.init, {})
    except InputError as exc:
        raise InputError(f"{exc}; or omp (a donor model's embeddings)") from None
    old_kind, new_kind = tok.tokenizer_kind(tok.tokenizer_spec(old)), tok.tokenizer_kind(tok.tokenizer_spec(new, "--tokenizer"), "--tokenizer")
    if old_kind != new_kind:
        raise InputError(f"--tokenizer: a '{new_kind}' tokenizer's strings cannot be spelled with the model's '{old_kind}' tokens; "
                         "use --init omp with a donor model, or a tokenizer of the same kind")


@dataclass
class Mapping:
    """Where each new row comes from: shared tokens' old ids, the new tokens, the rows without a token."""

    size: int
    old_rows: int
    shared_new: list[int]
    shared_old: list[int]
    new_ids: list[int]
    new_tokens: list[str]
    fillers: list[int]


def mapping(old_vocab: dict[str, int], new_vocab: dict[str, int], old_rows: int) -> Mapping:
    size = max(new_vocab.values()) + 1
    shared = sorted((j, old_vocab[t]) for t, j in new_vocab.items() if t in old_vocab and old_vocab[t] < old_rows)
    new = sorted((j, t) for t, j in new_vocab.items() if not (t in old_vocab and old_vocab[t] < old_rows))
    used = set(new_vocab.values())
    return Mapping(size, old_rows, [j for j, _ in shared], [i for _, i in shared], [j for j, _ in new], [t for _, t in new],
                   [i for i in range(size) if i not in used])


def new_matrix(old: Any, rows_for_new: Any, m: Mapping) -> Any:
    """The (size, dim) matrix: shared rows moved exactly, new rows given, token-less rows the old mean."""
    import torch

    out = old.mean(dim=0, keepdim=True).repeat(m.size, 1)
    out[m.shared_new] = old[m.shared_old]
    if m.new_ids:
        out[m.new_ids] = rows_for_new.to(old.dtype)
    return out


def _initializer_rows(opts: TransplantOptions, old_tok: Any, weight: Any, m: Mapping, config: Any) -> Any:
    import torch

    from adaptkit.vocab.initializers import load_initializer

    initializer = load_initializer(opts.init, {})
    pieces = tok.old_pieces(old_tok.backend_tokenizer, m.new_tokens)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(opts.seed)
        return initializer.rows(weight.float(), pieces, config)


def _omp_rows(opts: TransplantOptions, weight: Any, donor: Any, m: Mapping) -> Any:
    import torch

    if not m.new_ids:
        return weight.new_zeros((0, weight.shape[1]))
    indices, coeffs = omp(donor[m.new_ids].float(), donor[m.shared_new].float(), opts.k)
    shared_old = weight.double()[m.shared_old]
    return torch.bmm(coeffs.unsqueeze(1), shared_old[indices]).squeeze(1).float()


def transplant(opts: TransplantOptions, log: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Run the whole transplant; returns the record written to `adaptkit_vocab.json`."""
    from adaptkit.io.atomic import atomic_dir, check_output

    check_output(opts.output, opts.overwrite)
    source, old_tok, new_tok = _load_tokenizers(opts)
    _check(opts, old_tok, new_tok)
    from adaptkit.io.models import load_causal_lm
    from adaptkit.vocab.extend import model_dtype

    log(f"loading {source.location}")
    model = load_causal_lm(source, dtype=model_dtype(source))
    m = mapping(old_tok.get_vocab(), new_tok.get_vocab(), model.get_input_embeddings().weight.shape[0])
    if not m.shared_new:
        raise InputError(f"--tokenizer: '{opts.tokenizer}' shares no token with the model's tokenizer; nothing to transplant from")
    tied = model.get_output_embeddings() is None or model.get_output_embeddings().weight is model.get_input_embeddings().weight
    donor = _donor_matrices(opts, tied) if opts.init == OMP else None
    with atomic_dir(opts.output, opts.overwrite) as tmp:
        _rebuild(model, opts, old_tok, m, tied, donor)
        _set_special_ids(model, new_tok)
        log(f"writing {opts.output} ({len(m.shared_new)} rows kept, {len(m.new_ids)} by {opts.init}, {len(m.fillers)} without a token)")
        from adaptkit.io.models import save_model

        save_model(model, None, tmp)
        new_tok.save_pretrained(tmp)
        record = _record(opts, old_tok, new_tok, m, tied)
        from adaptkit.io.vocab_record import write_record

        write_record(tmp, record)
    return record


def _donor_matrices(opts: TransplantOptions, tied: bool) -> tuple[Any, Any]:
    """The donor's (input embeddings, LM head) indexed by the new vocabulary, in float32."""
    from adaptkit.io.models import load_causal_lm, resolve_model_source

    donor = load_causal_lm(resolve_model_source(str(opts.tokenizer), "--tokenizer"))
    embed = donor.get_input_embeddings().weight.detach().float()
    head = donor.get_output_embeddings()
    return embed, (embed if head is None else head.weight.detach().float())


def _rebuild(model: Any, opts: TransplantOptions, old_tok: Any, m: Mapping, tied: bool, donor: Any) -> None:
    """Resize the model to the new vocabulary and fill its embedding (and untied head) rows."""
    import torch

    matrices = [model.get_input_embeddings().weight.detach().float()]
    if not tied:
        matrices.append(model.get_output_embeddings().weight.detach().float())
    rebuilt = []
    for which, weight in enumerate(matrices):
        if donor is not None:
            rows = _omp_rows(opts, weight, donor[which], m)
        else:
            rows = _initializer_rows(opts, old_tok, weight, m, model.config)
        rebuilt.append(new_matrix(weight, rows, m))
    model.resize_token_embeddings(m.size, mean_resizing=False)
    targets = [model.get_input_embeddings().weight] + ([] if tied else [model.get_output_embeddings().weight])
    with torch.no_grad():
        for target, values in zip(targets, rebuilt):
            target.copy_(values.to(target.dtype))


def _set_special_ids(model: Any, new_tok: Any) -> None:
    """bos / eos / pad ids of the config (and generation config) from the new tokenizer's special tokens."""
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(new_tok, key, None)
        for config in (model.config, getattr(model, "generation_config", None)):
            if config is not None and (value is not None or getattr(config, key, None) is not None):
                setattr(config, key, value)


def _record(opts: TransplantOptions, old_tok: Any, new_tok: Any, m: Mapping, tied: bool) -> dict[str, Any]:
    return {
        "tokenizer_kind": tok.tokenizer_kind(tok.tokenizer_spec(new_tok, "--tokenizer"), "--tokenizer") if opts.init != OMP else "as the donor's",
        "old_vocab_size": m.old_rows,
        "new_vocab_size": m.size,
        "added": len(m.new_ids),
        "new_token_ids": m.new_ids,
        "filler_ids": m.fillers,
        "tied_embeddings": tied,
        "initializer": {"name": opts.init, "params": {"k": opts.k} if opts.init == OMP else {}, "seed": opts.seed},
        "new_tokens": m.new_tokens,
        "transplant": {"tokenizer": str(opts.tokenizer), "kept": len(m.shared_new), "initialized": len(m.new_ids), "without_token": len(m.fillers)},
    }
