"""The streaming merge executor: one implementation of loading, checking, dtype and writing.

For every parameter name of the first `--model` (in file order), the executor reads that
tensor from every input, converts floating tensors to float32 (float64 if an input is
float64), calls the method's `merge_tensor`, casts the result to the output dtype and
appends it to the output shard. Peak memory is about the largest tensor times the number
of inputs (plus the method's temporaries), not the model size.

Before anything is written, it checks that the inputs are local model directories of one
architecture with the same tensor names and shapes (naming the first tensor that
differs), that safetensors files are whole, and that the method accepts the inputs and
every per-tensor parameter set.

Vocabulary rule: a base or auxiliary model (instruct model, instruction vector) may have
fewer rows than the `--model`s in the tensors whose first dimension is the vocabulary
(embeddings, LM head) when the models' vocabularies were extended by adaptation. The
method then runs on the shared rows, and the rows only the `--model`s have (tokens added
by adaptation) are copied unchanged from the first `--model`. Token ids are assumed to be
kept by the extension (new tokens appended), as tokenizer extension does.

Non-floating tensors (integer buffers) are copied from the first `--model`. A model output
keeps the first `--model`'s vocabulary-extension record (`adaptkit_vocab.json`): its rows,
and so the record's extension rows, are the output's.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from adaptkit import __version__
from adaptkit.errors import InputError
from adaptkit.io.atomic import atomic_dir, check_output
from adaptkit.io.mask_files import UnitFile
from adaptkit.io.model_card import CardInfo, merged_languages, write_model_card
from adaptkit.io.vocab_record import copy_record
from adaptkit.layers import layer_index
from adaptkit.merge.base import MergeMethod, TensorContext, public_params
from adaptkit.merge.stream import DTYPES, PlannedTensor, RowBlocks, ShardedWriter, TensorSource, raw_bytes
from adaptkit.specs import Params

OUTPUT_DTYPES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16", "float64": "F64"}
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
)
VECTOR_INFO = "instruct_vector.json"


@dataclass(frozen=True)
class Input:
    """One input: its role ('model', 'base' or a method parameter), path, flag and kind.

    kind: 'model' (HF model directory), 'vector' (instruction-vector directory) or
    'tensors' (a safetensors file of per-parameter masks or scores, or its directory,
    where `filename` is looked up).
    """

    role: str
    path: Path
    flag: str
    kind: str = "model"
    filename: str = ""


@dataclass
class MergeOptions:
    overwrite: bool = False
    dtype: str | None = None  # output dtype of floating tensors; default: as in the first --model
    seed: int = 0
    shard_size: int = 5 * 10**9
    tokenizer_from: Path | None = None  # default: the first --model
    tokenizer_source: str | None = None  # base, union or an input's path: rows mapped by token string (adaptkit.merge.vocab)
    vocab_init: str | None = None  # with tokenizer_source: an initializer for rows an input lacks (default: mergekit's rule)
    prefix: str = "model"  # output shard names: <prefix>.safetensors / <prefix>-0000i-of-0000n.safetensors
    write_config: bool = True  # False for outputs that are not models (instruction vectors)
    copy_tokenizer: bool = True
    vocab_rule: bool = True  # allow base/aux inputs with fewer vocabulary rows (see the module doc)
    finalize: Callable[[Path, dict[str, Any]], list[str]] | None = None  # adds files; returns notes for the card
    command: str = ""  # for the card
    config: str = ""  # the YAML config text, for the card
    title: str = "Merge card"
    progress: bool = False


@dataclass
class _Source:
    input: Input
    tensors: TensorSource
    config: dict[str, Any]
    units: UnitFile | None = None  # for 'tensors' inputs: entries by parameter name

    @property
    def model_type(self) -> str:
        return str(self.config.get("model_type", ""))

    @property
    def vocab_size(self) -> int | None:
        size = self.config.get("vocab_size", (self.config.get("text_config") or {}).get("vocab_size"))
        return int(size) if size is not None else None

    def describe(self) -> str:
        return f"{self.input.flag} '{self.input.path}'"


def _open(item: Input) -> _Source:
    path = Path(item.path)
    if item.kind == "tensors":
        file = path / item.filename if path.is_dir() else path
        if not file.is_file():
            expected = f"a safetensors file or a directory holding {item.filename}" if item.filename else "a safetensors file"
            raise InputError(f"{item.flag}: '{file}' not found; expected {expected}")
        tensors = TensorSource(file, item.flag)
        return _Source(item, tensors, {}, UnitFile(tensors))
    if item.kind == "vector":
        info_file = path / VECTOR_INFO
        if not info_file.is_file():
            raise InputError(f"{item.flag}: '{path}' is not an instruction vector (no {VECTOR_INFO}); make one with `adaptkit instruct-vector extract`")
        try:
            info = json.loads(info_file.read_text())
        except ValueError:
            raise InputError(f"{item.flag}: '{info_file}' is not valid JSON") from None
        return _Source(item, TensorSource(path, item.flag, prefix="vector"), info)
    if path.is_file() and path.suffix == ".gguf":
        raise InputError(f"{item.flag}: '{path}' is a GGUF file; merging needs a model directory with safetensors weights")
    if not path.is_dir():
        raise InputError(f"{item.flag}: '{path}' is not a local model directory (with config.json and *.safetensors)")
    from adaptkit.io.models import read_config, resolve_model_source

    resolve_model_source(path, item.flag)
    try:
        config = read_config(path)
    except ValueError:
        raise InputError(f"{item.flag}: '{path}/config.json' is not valid JSON") from None
    return _Source(item, TensorSource(path, item.flag), config)


def _vocab_tensor(source: _Source, shape: tuple[int, ...]) -> bool:
    return len(shape) == 2 and shape[0] == source.vocab_size


def _check_alignment(reference: _Source, other: _Source, strict: bool, across: bool = False) -> dict[str, int]:
    """Same architecture, names and shapes; returns {tensor: shared rows} where the vocabulary rule applies.
    `across` (a vocabulary map): vocabulary tensors may have any number of rows."""
    if other.model_type and reference.model_type and other.model_type != reference.model_type:
        raise InputError(
            f"{other.input.flag}: '{other.input.path}' is a '{other.model_type}' model but {reference.describe()} "
            f"is '{reference.model_type}'; inputs must share one architecture"
        )
    names, other_names = reference.tensors.tensors, other.tensors.tensors
    missing = [name for name in names if name not in other_names]
    if missing:
        raise InputError(f"{other.input.flag}: '{other.input.path}' has no tensor '{missing[0]}' that {reference.describe()} has; architectures differ")
    extra = [name for name in other_names if name not in names]
    if extra:
        raise InputError(f"{other.input.flag}: '{other.input.path}' has a tensor '{extra[0]}' that {reference.describe()} lacks; architectures differ")
    shared_rows: dict[str, int] = {}
    for name, info in names.items():
        theirs = other_names[name].shape
        if theirs == info.shape and not across:
            continue
        if across and _vocab_tensor(other, theirs) and _vocab_tensor(reference, info.shape) and theirs[1:] == info.shape[1:]:
            continue
        if theirs == info.shape:
            continue
        vocab_rows = (
            not strict
            and len(theirs) == len(info.shape) >= 1
            and theirs[1:] == info.shape[1:]
            and theirs[0] < info.shape[0]
            and theirs[0] == other.vocab_size
            and info.shape[0] == reference.vocab_size
        )
        if not vocab_rows:
            vocabularies = _vocab_tensor(other, theirs) and _vocab_tensor(reference, info.shape) and theirs[1:] == info.shape[1:]
            advice = ("; the vocabularies differ: pass --tokenizer-source base|union|PATH (tokenizer_source in a config) "
                      "to map rows by token string") if vocabularies else "; shapes must match"
            raise InputError(f"{other.input.flag}: tensor '{name}' has shape {tuple(theirs)} in '{other.input.path}' but {tuple(info.shape)} in {reference.describe()}{advice}")
        shared_rows[name] = theirs[0]
    return shared_rows


def _num_layers(reference: _Source) -> int:
    configured = reference.config.get("num_hidden_layers", (reference.config.get("text_config") or {}).get("num_hidden_layers"))
    if configured:
        return int(configured)
    indices = [layer_index(name) for name in reference.tensors.tensors]
    return max((i for i in indices if i is not None), default=-1) + 1


def _tensor_hash_algorithm() -> tuple[str, Callable[[], Any]]:
    """xxh3-128 (about 10x faster than sha256) when the xxhash package is installed, else sha256."""
    try:
        import xxhash

        return "xxh3_128", xxhash.xxh3_128
    except ImportError:
        return "sha256", hashlib.sha256


class _Hasher:
    """A content hash of a model's weights, independent of sharding and tensor order:
    sha256 over the sorted (name, per-tensor hash of dtype, shape and bytes)."""

    algorithm, _new = _tensor_hash_algorithm()

    def __init__(self) -> None:
        self.digests: dict[str, str] = {}

    def update(self, name: str, tensor: torch.Tensor) -> None:
        digest = self.begin(tensor.dtype, tensor.shape)
        digest.update(raw_bytes(tensor))
        self.end(name, digest)

    def begin(self, dtype: torch.dtype, shape: tuple[int, ...]) -> Any:
        """A tensor's digest, to be updated with its bytes in order (a tensor read in chunks)."""
        return self._new(f"{dtype}{tuple(shape)}".encode())

    def end(self, name: str, digest: Any) -> None:
        self.digests[name] = digest.hexdigest()

    def hexdigest(self) -> str:
        total = hashlib.sha256()
        for name in sorted(self.digests):
            total.update(f"{name}:{self.digests[name]}\n".encode())
        return f"{self.algorithm}:{total.hexdigest()}"


def run_merge(
    method: MergeMethod,
    params: Params,
    models: list[Input],
    output: Path,
    base: Input | None = None,
    aux: list[Input] | None = None,
    options: MergeOptions | None = None,
    tensor_params: Callable[[str, float], Params] | None = None,
) -> dict[str, Any]:
    """Merge `models` (and `base`, `aux`) with `method` into the model directory `output`.

    `tensor_params(name, t)` gives per-tensor parameters (mergekit filters and gradients);
    otherwise `params` applies to every tensor. Returns the summary recorded in the card.
    """
    options = options or MergeOptions()
    aux = aux or []
    started = time.perf_counter()
    _check_options(output, options)
    sources = [_open(item) for item in models]
    reference = sources[0]
    if not reference.tensors.tensors:
        raise InputError(f"{reference.input.flag}: '{reference.input.path}' holds no tensors")
    num_layers = _num_layers(reference)
    names = list(reference.tensors.tensors)
    params_for = _param_table(method, params, tensor_params, names, num_layers, len(sources), base is not None)
    base_source = _open(base) if base is not None else None
    aux_sources = [_open(item) for item in aux]
    across = options.tokenizer_source is not None
    shared_rows = _check_inputs(reference, sources[1:], base_source, aux_sources, options.vocab_rule, across)
    everything = sources + ([base_source] if base_source else []) + aux_sources
    vocab = _vocab_map(everything, options) if across else None
    if vocab is None:
        _check_tokenizers(reference, everything[1:], options)
    try:
        config = _output_config(reference, options.dtype, vocab)
        plan = [_planned(reference, name, options.dtype, vocab) for name in names]
        hashers = {id(source): _Hasher() for source in everything}
        align = _aligned(vocab, everything, hashers, options.seed) if vocab is not None and not vocab.identity else None

        def merge_one(item: PlannedTensor, hash_pool: ThreadPoolExecutor) -> torch.Tensor:
            return _merge_one(method, params_for(item.name), item, sources, base_source, aux_sources,
                              shared_rows.get(item.name), num_layers, options.seed, hashers, hash_pool, align)

        with atomic_dir(output, options.overwrite) as tmp:
            files = _write_merged(tmp, plan, options, merge_one, everything)
            seconds = time.perf_counter() - started
            summary = _summary(method, params, tensor_params is not None, sources, base_source, aux_sources, hashers, options, files, len(plan), shared_rows, seconds, output)
            if vocab is not None:
                summary["vocabulary"] = {"tokenizer": vocab.description, "size": vocab.size, "init": options.vocab_init or "other inputs' rows"}
            _finish_directory(tmp, reference, summary, options, vocab, config)
    finally:
        if vocab is not None:
            vocab.close()
    return summary


def _vocab_map(everything: list[_Source], options: MergeOptions) -> Any:
    """The output vocabulary of `tokenizer_source`, with every model / vector input's rows mapped to it."""
    from adaptkit.merge.vocab import Member, plan_vocabulary

    if options.tokenizer_from is not None:
        raise InputError("--tokenizer-from: give either --tokenizer-from (files copied, rows kept by id) or --tokenizer-source (rows mapped by token string), not both")
    members = []
    for source in everything:
        if source.input.kind == "tensors":
            continue
        path = Path(source.input.path)
        if source.input.kind == "vector" and not (path / "tokenizer.json").is_file():
            raise InputError(f"{source.describe()} stores no tokenizer (extracted by an older adaptkit); extract it again to merge across vocabularies")
        members.append(Member(source.input.flag, path, "vector" if source.input.kind == "vector" else "model", source.vocab_size or 0, source.input.role == "base"))
    return plan_vocabulary(members, options.tokenizer_source, "--tokenizer-source", options.vocab_init)


def _aligned(vocab: Any, everything: list[_Source], hashers: dict[int, _Hasher], seed: int) -> Any:
    """The reader of vocabulary tensors on the output vocabulary (every input but mask / score files)."""
    from adaptkit.merge.vocab_tensors import VocabTensors

    members = [s for s in everything if s.input.kind != "tensors"]
    return VocabTensors(vocab, [s.tensors for s in members], [hashers[id(s)] for s in members], seed)


def _check_options(output: Path, options: MergeOptions) -> None:
    check_output(output, options.overwrite)
    if options.dtype is not None and options.dtype not in OUTPUT_DTYPES:
        raise InputError(f"--dtype: '{options.dtype}' is not supported (choose from {', '.join(OUTPUT_DTYPES)})")
    if options.tokenizer_from is not None and not Path(options.tokenizer_from).is_dir():
        raise InputError(f"--tokenizer-from: '{options.tokenizer_from}' is not a directory")


def _check_inputs(reference: _Source, others: list[_Source], base: _Source | None, aux: list[_Source], vocab_rule: bool, across: bool = False) -> dict[str, int]:
    """Every input aligned with the first --model; returns the vocabulary tensors' shared rows (the vocabulary rule).
    `across`: vocabularies are mapped by token string, so vocabulary tensors may differ in rows."""
    shared_rows: dict[str, int] = {}
    for other in others:
        _check_alignment(reference, other, strict=True, across=across)
    for other in ([base] if base else []) + [s for s in aux if s.input.kind != "tensors"]:
        for name, rows in _check_alignment(reference, other, strict=not vocab_rule, across=across).items():
            shared_rows[name] = min(rows, shared_rows.get(name, rows))
    for other in [s for s in aux if s.input.kind == "tensors"]:
        stray = [name for name in other.units.entries if name not in reference.tensors.tensors]
        if stray:
            raise InputError(f"{other.input.flag}: '{stray[0]}' in '{other.tensors.path}' is not a parameter of {reference.describe()}; made for another model?")
    return shared_rows


def _check_tokenizers(reference: _Source, others: list[_Source], options: MergeOptions) -> None:
    """Refuse an output without a tokenizer, and inputs whose tokenizers give one id to different
    tokens (their rows would be merged by id), unless --tokenizer-from names the tokenizer."""
    from adaptkit.io.vocabulary import first_conflict, has_tokenizer, read_vocabulary

    if options.tokenizer_from is not None:
        return
    advice = ("pass --tokenizer-source base|union|PATH (tokenizer_source in a config) to map rows by token string, "
              "or --tokenizer-from DIR to keep rows by id with DIR's tokenizer")
    if options.copy_tokenizer and not has_tokenizer(reference.input.path):
        raise InputError(f"{reference.describe()} has no tokenizer files, so the merged model would have none; {advice}")
    ours = read_vocabulary(reference.input.path, reference.input.flag)
    for other in others:
        theirs = read_vocabulary(other.input.path, other.input.flag) if other.input.kind in ("model", "vector") else None
        conflict = first_conflict(ours, theirs) if ours is not None and theirs is not None else None
        if conflict is not None:
            index, mine, their = conflict
            raise InputError(
                f"{other.describe()}: its tokenizer maps id {index} to {their!r} where {reference.describe()} has {mine!r}; "
                f"the vocabularies differ, so embedding rows would be merged by id across different tokens; {advice}"
            )


def _planned(reference: _Source, name: str, dtype: str | None, vocab: Any = None) -> PlannedTensor:
    """The output tensor `name`: the first --model's shape (rows of the output vocabulary for a
    vocabulary tensor, with a vocabulary map), in `dtype` when floating (else as stored)."""
    info = reference.tensors.tensors[name]
    floating = DTYPES[info.dtype].is_floating_point
    shape = info.shape
    if vocab is not None and _vocab_tensor(reference, tuple(shape)):
        shape = type(shape)([vocab.size, *shape[1:]])
    return PlannedTensor(name, OUTPUT_DTYPES[dtype] if (dtype and floating) else info.dtype, shape)


def _write_merged(tmp: Path, plan: list[PlannedTensor], options: MergeOptions, merge_one: Callable, everything: list[_Source]) -> list[str]:
    """Merge and write every planned tensor into `tmp`; returns the shard files. Closes every input."""
    writer = ShardedWriter(tmp, plan, options.shard_size, prefix=options.prefix)
    # Inputs are hashed on two threads and each output is written on a third while the
    # next tensor is merged (hashing, file writes and torch release the GIL); at most
    # one written tensor is in flight. Torch computes on one thread: the work is
    # elementwise and memory-bound, and an OpenMP team stalls at every operation when
    # a core is busy (our I/O threads, or other processes on a shared machine).
    hash_pool, write_pool = ThreadPoolExecutor(2), ThreadPoolExecutor(1)
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    pending = None
    try:
        with _progress(options.progress, len(plan)) as advance:
            for item in plan:
                out = merge_one(item, hash_pool)
                if pending is not None:
                    pending.result()
                pending = write_pool.submit(writer.write, item.name, out)
                del out
                advance()
        if pending is not None:
            pending.result()
        return writer.finish()
    except BaseException:
        write_pool.shutdown(wait=True, cancel_futures=True)
        writer.abort()
        raise
    finally:
        torch.set_num_threads(torch_threads)
        hash_pool.shutdown()
        write_pool.shutdown()
        for source in everything:
            source.tensors.close()


def _finish_directory(tmp: Path, reference: _Source, summary: dict[str, Any], options: MergeOptions, vocab: Any, config: dict[str, Any]) -> None:
    """Config, vocabulary record, tokenizer, the finalize step's files, merge card and (for a model) its Hub card.
    With a vocabulary map: its tokenizer and vocabulary size, and no extension record (the rows moved)."""
    if options.write_config:
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        if vocab is None:
            copy_record(Path(reference.input.path), tmp)
    if options.copy_tokenizer or (vocab is not None and not options.write_config):  # an instruction vector keeps its tokenizer
        copy_tokenizer_files(Path(vocab.files if vocab is not None else options.tokenizer_from or reference.input.path), tmp)
    if options.finalize is not None:
        summary["notes"] = options.finalize(tmp, summary)
    (tmp / "merge_card.md").write_text(_card(summary, options), encoding="utf-8")
    if options.write_config:  # a model (not an instruction vector): its Hub model card
        write_model_card(tmp, merge_card_info(summary, options))


def _param_table(method, params, tensor_params, names, num_layers, n_models, has_base) -> Callable[[str], Params]:
    """Per-tensor parameters, all resolved and checked before anything is written."""
    if tensor_params is None:
        method.check(params, n_models, has_base, num_layers)
        return lambda name: params
    table: dict[str, Params] = {}
    checked: set[int] = set()
    for name in names:
        context = TensorContext(name=name, num_layers=num_layers)
        resolved = tensor_params(name, context.t)
        if id(resolved) not in checked:
            method.check(resolved, n_models, has_base, num_layers)
            checked.add(id(resolved))
        table[name] = resolved
    return table.__getitem__


def _merge_one(method, params, item, sources, base_source, aux_sources, rows, num_layers, seed, hashers, hash_pool, align=None) -> torch.Tensor | RowBlocks:
    """Read one tensor from every input, hash it, merge it in the compute dtype, cast it for output."""
    name = item.name
    across = align is not None and align.covers(name)  # a vocabulary tensor, rebuilt on the output vocabulary
    tensors = [] if across else [source.tensors.read(name) for source in sources]
    base = base_source.tensors.read(name) if base_source and not across else None
    aux, aux_meta = _read_aux(aux_sources, name, members=not across)
    read = list(zip(sources, tensors)) + ([(base_source, base)] if base is not None else [])
    read += [(s, aux[s.input.role]) for s in aux_sources if aux.get(s.input.role) is not None]
    for done in [hash_pool.submit(hashers[id(source)].update, name, tensor) for source, tensor in read]:
        done.result()  # before merging: methods may overwrite their inputs
    context = TensorContext(name=name, num_layers=num_layers, seed=seed, aux=aux, aux_meta=aux_meta)
    if across:
        return _merge_across(method, params, item, align, len(sources), base_source is not None, [s.input.role for s in aux_sources if s.units is None], context)

    out_dtype = DTYPES[item.dtype]
    if not tensors[0].is_floating_point():
        return tensors[0].to(out_dtype)
    compute = torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32
    full_rows = tensors[0].shape[0] if tensors[0].dim() else 0
    cut = rows is not None and rows < full_rows

    def prepare(tensor: torch.Tensor | None) -> torch.Tensor | None:
        if tensor is None or not tensor.is_floating_point():
            return tensor
        if cut and tensor.shape[0] == full_rows:
            tensor = tensor[:rows]
        return tensor.to(compute)

    tail = tensors[0][rows:].to(compute) if cut else None
    inputs, base, aux = [prepare(t) for t in tensors], prepare(base), {k: prepare(v) for k, v in aux.items()}
    context.aux = aux
    del tensors, read
    merged = _checked(method, inputs, base, params, context)
    if tail is not None:
        merged = torch.cat([merged, tail])
    return merged.to(out_dtype)


def _read_aux(aux_sources: list[_Source], name: str, members: bool) -> tuple[dict[str, Any], dict[str, dict[str, str]]]:
    """The auxiliary inputs' tensors `name` by role (model / vector inputs only if `members`), and the masks' granularities."""
    aux: dict[str, torch.Tensor | None] = {}
    aux_meta: dict[str, dict[str, str]] = {}
    for source in aux_sources:
        if source.units is None:
            if members:
                aux[source.input.role] = source.tensors.read(name)
        else:
            found = source.units.read(name)
            aux[source.input.role] = found[0] if found else None
            aux_meta[source.input.role] = {"granularity": found[1]} if found and found[1] else {}
    return aux, aux_meta


def _checked(method: MergeMethod, inputs: list[torch.Tensor], base: torch.Tensor | None, params: Params, context: TensorContext,
             merge: Callable[..., torch.Tensor] | None = None) -> torch.Tensor:
    shape = tuple(inputs[0].shape)
    merged = (merge or method.merge_tensor)(inputs, base, params, context)
    if tuple(merged.shape) != shape:
        raise RuntimeError(f"merge method {method.name} returned shape {tuple(merged.shape)} for '{context.name}', expected {shape}")
    return merged


def _merge_across(method, params, item, align, n_models: int, has_base: bool, roles: list[str], context: TensorContext) -> torch.Tensor | RowBlocks:
    """A vocabulary tensor of a merge across vocabularies: the method on every input's rows of the
    output vocabulary (model inputs, base, then the auxiliary model / vector inputs by `roles`).
    A row-separable method (declared by its class) merges a block of rows at a time, read and
    merged while the writer writes them; a method with row statistics the same after a first pass
    over the blocks that sums its statistics; otherwise whole rebuilt tensors."""
    out_dtype = DTYPES[item.dtype]
    compute = torch.float64 if any(DTYPES[s.tensors[item.name].dtype] == torch.float64 for s in align.sources[:n_models]) else torch.float32
    others = dict(context.aux)  # mask / score files: as stored

    def split(tensors: list[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor | None, TensorContext]:
        aux = dict(zip(roles, tensors[n_models + has_base:]))
        block = TensorContext(name=context.name, num_layers=context.num_layers, seed=context.seed, aux={**others, **aux}, aux_meta=context.aux_meta)
        return tensors[:n_models], tensors[n_models] if has_base else None, block

    def merged(tensors: list[torch.Tensor], merge: Callable[..., torch.Tensor] | None = None) -> torch.Tensor:
        inputs, base, block = split(tensors)
        return _checked(method, inputs, base, params, block, merge).to(out_dtype)

    if align.vocab.init is None and all(v is None for v in others.values()):
        if method.row_separable:
            return RowBlocks(out_dtype, tuple(item.shape), align.blocks(item.name, compute, merged))
        if method.row_statistics:
            return RowBlocks(out_dtype, tuple(item.shape), _two_passes(method, params, item.name, align, compute, split, merged))
    return merged(align.whole(item.name, compute))


def _two_passes(method, params, name: str, align, compute: torch.dtype, split, merged) -> Iterator[torch.Tensor]:
    """A row-statistics method's merged blocks of rows: its statistics summed over every block, then each block merged with them."""
    totals: list[torch.Tensor] = []

    def add(tensors: list[torch.Tensor]) -> None:
        inputs, base, block = split(tensors)
        part = method.statistics(inputs, base, params, block)
        totals[:] = [totals[0] + part] if totals else [part]

    def rows(inputs, base, params_, context):
        return method.merge_rows(inputs, base, params_, context, totals[0])

    return align.blocks(name, compute, lambda tensors: merged(tensors, rows), first_pass=add)


class _progress:
    """A Rich progress bar over tensors (only on a terminal); yields an `advance()` callable."""

    def __init__(self, enabled: bool, total: int):
        self.enabled = enabled
        self.total = total
        self.bar = None

    def __enter__(self) -> Callable[[], None]:
        if not self.enabled:
            return lambda: None
        from rich.progress import Progress

        self.bar = Progress(transient=True)
        self.bar.start()
        task = self.bar.add_task("merging tensors", total=self.total)
        return lambda: self.bar.advance(task)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()


def _summary(method, params, per_tensor, sources, base_source, aux_sources, hashers, options, files, count, shared_rows, seconds, output) -> dict[str, Any]:
    inputs = []
    for source in sources + ([base_source] if base_source else []) + aux_sources:
        inputs.append(
            {
                "role": source.input.role,
                "path": str(Path(source.input.path).resolve()),
                "weights_hash": hashers[id(source)].hexdigest(),
                "model_type": source.model_type,
            }
        )
    return {
        "output": str(output),
        "method": method.name,
        "reference": method.reference,
        "params": public_params(params),
        "per_tensor_params": per_tensor,
        "inputs": inputs,
        "dtype": options.dtype or "as input",
        "seed": options.seed,
        "tensors": count,
        "shards": len(files),
        "extra_vocab_rows": sorted(shared_rows),
        "seconds": round(seconds, 3),
        "adaptkit": __version__,
    }


def _output_config(reference: _Source, dtype: str | None, vocab: Any) -> dict[str, Any]:
    """The first --model's config with the output dtype (and, with a vocabulary map, its size and special ids)."""
    config = dict(reference.config)
    if vocab is not None:
        from adaptkit.io.vocabulary import read_vocabulary

        config = vocab.config(config, lambda: read_vocabulary(reference.input.path, reference.input.flag) or {}, reference.describe())
    if dtype:
        if "torch_dtype" in config:
            config["torch_dtype"] = dtype
        config["dtype"] = dtype
    return config


def copy_tokenizer_files(source: Path, directory: Path) -> None:
    """The tokenizer (and generation config) files of `source` that exist, into `directory`."""
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, directory / name)


def merge_card_info(summary: dict[str, Any], options: MergeOptions) -> CardInfo:
    """The Hub model card of a merged model, from the merge summary (merge_card.md has the full record)."""
    models = [item["path"] for item in summary["inputs"] if item["role"] in ("model", "base")]
    others = [f"{item['role']} `{item['path']}`" for item in summary["inputs"] if item["role"] not in ("model", "base")]
    text = f"Merged with adaptkit's `{summary['method']}` merge method from {len(models)} model(s)"
    text += (f", with {', '.join(others)}" if others else "") + "; the full record (input weight hashes) is in `merge_card.md`."
    facts = {"output dtype": summary["dtype"], "tensors": summary["tensors"], "seed": summary["seed"]}
    facts.update({f"note {i + 1}": note for i, note in enumerate(summary.get("notes") or [])})
    return CardInfo(title=f"{summary['method']} merge", method=summary["method"], relation="merge", summary=text,
                    bases=models, languages=merged_languages(models), facts=facts, hyperparameters=dict(summary["params"]),
                    reference=summary["reference"], command=options.command)


def _card(summary: dict[str, Any], options: MergeOptions) -> str:
    lines = [f"# {options.title}", ""]
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines.append(f"Made by adaptkit {summary['adaptkit']} on {when}" + (f": `{options.command}`" if options.command else "") + ".")
    lines += ["", f"- method: `{summary['method']}` ({summary['reference']})"]
    lines.append(f"- output dtype: {summary['dtype']}; tensors: {summary['tensors']}; shards: {summary['shards']}; seed: {summary['seed']}")
    if summary["per_tensor_params"]:
        lines.append("- parameters vary by tensor (filters or gradients of the config); the values below are the defaults")
    for note in summary.get("notes") or []:
        lines.append(f"- {note}")
    if summary["extra_vocab_rows"]:
        lines.append(
            "- vocabulary rule: rows that only the first --model has (tokens added by adaptation) were copied "
            f"unchanged in: {', '.join(summary['extra_vocab_rows'])}"
        )
    lines += ["", "## Inputs", "", "| role | path | weights hash | model type |", "| --- | --- | --- | --- |"]
    for item in summary["inputs"]:
        lines.append(f"| {item['role']} | {item['path']} | `{item['weights_hash']}` | {item['model_type']} |")
    lines += ["", "Weights hash: sha256 over the sorted tensor names and per-tensor hashes (the named algorithm) of dtype, shape and bytes; independent of sharding."]
    lines += ["", "## Parameters", "", "```json", json.dumps(summary["params"], indent=2), "```", ""]
    if options.config:
        lines += ["## Config", "", "```yaml", options.config.rstrip(), "```", ""]
    lines += ["## Record", "", "```json", json.dumps(summary, indent=2), "```", ""]
    return "\n".join(lines)
