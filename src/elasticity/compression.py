"""`elasticity compress`: bits/token and bits/byte of datasets under a model, and KL to a reference model.

For each dataset (records with `text`, or `prompt`/`response`):
- text: rolling code length of whole documents, every token predicted once (lm-eval's
  `loglikelihood_rolling` semantics; see `elasticity.likelihood`);
- prompt/response: response-only code length (response tokens + EOS are the targets; bytes are the
  response's UTF-8 bytes);
- with `--reference`: the mean per-token KL between the model and the reference on the same targets,
  teacher-forced, KL(model || reference) by default.

Nats and counts are summed over the dataset and divided once. Writes a `compress-<hash>` run directory with
`<dataset-stem>.json` per dataset and `results.json`, and prints the rates. The Python API for an
already-loaded model is `elasticity.codelength` (`rolling_nll`, `response_nll`, `response_kl`, `Totals`).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from elasticity.codelength import Totals, encode_documents, encode_responses, score_sequences
from elasticity.config import InputPath
from elasticity.data.records import Fields, load_records
from elasticity.data.sources import HUB_PREFIX, first_row
from elasticity.errors import UserError
from elasticity.models.hf import context_length, quiet_loading, resolve_device
from elasticity.runs import Run, planned_run, run_stage

STAGE = "compress"
Kind = Literal["text", "pair"]


@dataclass(frozen=True)
class Config:
    """What `elasticity compress` measures.

    Attributes:
        model: a local Hugging Face model folder, a training run directory, or a hub id.
        data: JSONL/JSON files (or `hf:NAME[:SUBSET]`) of `text` records or `prompt`/`response` records.
        reference: a second model (same tokenizer) for the per-token KL; none by default.
        kind: "auto" detects each file's records from its first one; "text" or "pair" forces it.
        max_length: tokens one forward pass reads (default: the model's context length).
        batch_size: full-length windows per forward pass (shorter windows fill the same number of tokens).
        bf16: bfloat16 autocast for the forward passes (log-probabilities stay float32).
        kl_direction: "forward" = KL(model || reference), "reverse" = KL(reference || model).
        fields: the records' names for prompt, response and text.
        split: split of a hub dataset.
        device: "auto" (CUDA if available, else CPU), "cpu", "cuda", "cuda:1", ...
        trust_remote_code: let Hugging Face run a model's own code (off unless asked).
        allow_pickle: read weights stored only as a pickle (.bin), which can run code when read (off).
    """

    model: InputPath
    data: tuple[InputPath, ...]
    reference: InputPath | None = None
    kind: Literal["auto", "text", "pair"] = "auto"
    max_length: int | None = None
    batch_size: int = 8
    bf16: bool = False
    kl_direction: Literal["forward", "reverse"] = "forward"
    fields: Fields = field(default_factory=Fields)
    split: str = "train"
    device: str = "auto"
    trust_remote_code: bool = False
    allow_pickle: bool = False


@dataclass(frozen=True)
class Dataset:
    source: str
    name: str  # the result file's stem
    kind: Kind
    records: list[dict[str, str]]


def _detect_kind(source: str, fields: Fields, split: str) -> Kind:
    if source.startswith(HUB_PREFIX):  # no cheap peek: try documents, then pairs
        try:
            load_records(source, ("text",), fields, split)
            return "text"
        except UserError:
            return "pair"
    first = first_row(source, split)
    if not isinstance(first, dict):
        return "text"  # load_records reports the missing file, bad line or empty dataset
    if fields.prompt in first and fields.response in first:
        return "pair"
    if fields.text in first:
        return "text"
    raise UserError(
        f"{source}: the first record has neither a '{fields.text}' field nor '{fields.prompt}'/'{fields.response}' "
        f"fields (set the names with --fields.text / --fields.prompt / --fields.response, or --kind)"
    )


def _stem(source: str, taken: set[str]) -> str:
    if source.startswith(HUB_PREFIX):
        stem = source[len(HUB_PREFIX):].replace("/", "_").replace(":", "_")
    else:
        stem = Path(source).stem
    name, i = stem, 2
    while name in taken or name == "results":
        name, i = f"{stem}-{i}", i + 1
    taken.add(name)
    return name


def load_datasets(cfg: Config) -> list[Dataset]:
    """Read and check every dataset before any model is loaded or any file written."""
    if not cfg.data:
        raise UserError("no dataset given (pass --data FILE.jsonl [FILE2.jsonl ...])")
    out, taken = [], set()
    for source in cfg.data:
        kind = cfg.kind if cfg.kind != "auto" else _detect_kind(source, cfg.fields, cfg.split)
        need = ("text",) if kind == "text" else ("prompt", "response")
        records = load_records(source, need, cfg.fields, cfg.split)
        if kind == "text" and not any(r["text"] for r in records):
            raise UserError(f"{source}: every document is empty; there is nothing to score")
        out.append(Dataset(source, _stem(source, taken), kind, records))
    return out


def _check_settings(cfg: Config) -> None:
    if cfg.batch_size < 1:
        raise UserError(f"batch_size must be at least 1, got {cfg.batch_size}")
    if cfg.max_length is not None and cfg.max_length < 1:
        raise UserError(f"max_length must be at least 1, got {cfg.max_length}")


def _max_length(cfg: Config, model, tok) -> int:
    try:
        limit = context_length(model.config, tok)
    except ValueError:
        if cfg.max_length is None:
            raise UserError(f"cannot tell the context length of {cfg.model}; set --max_length") from None
        return cfg.max_length
    if cfg.max_length is not None and cfg.max_length > limit:
        raise UserError(f"max_length {cfg.max_length} exceeds the context length of {cfg.model} ({limit}); "
                        f"lower --max_length")
    return cfg.max_length or limit


def _same_tokenizer(a, b) -> bool:
    return (a.get_vocab() == b.get_vocab() and a.bos_token_id == b.bos_token_id
            and a.eos_token_id == b.eos_token_id)


def measure(model, tok, ds: Dataset, max_length: int, batch_size: int, bf16: bool = False,
            reference=None, direction: str = "forward") -> dict:
    """One dataset's result: summed nats and counts, the rates, and the KL if a reference is given."""
    start = time.perf_counter()
    if ds.kind == "text":
        texts = [r["text"] for r in ds.records]
        seqs, starts = encode_documents(tok, texts)
        n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    else:
        seqs, starts = encode_responses(tok, ds.records)
        n_bytes = sum(len(r["response"].encode("utf-8")) for r in ds.records)
    nats, kl = score_sequences(model, seqs, starts, max_length, batch_size, bf16, reference, direction)
    seconds = time.perf_counter() - start
    n_tokens = sum(len(s) - st for s, st in zip(seqs, starts))
    totals = Totals(math.fsum(nats), n_tokens, n_bytes, len(seqs))
    result = {
        "dataset": ds.source,
        "name": ds.name,
        "kind": ds.kind,
        "targets": "every document token" if ds.kind == "text" else "response tokens + EOS",
        **totals.to_dict(),
        "windows": sum(-(-(len(s) - st) // max_length) for s, st in zip(seqs, starts)),
        "max_length": max_length,
        "seconds": round(seconds, 4),
        "tokens_per_s": round(n_tokens / seconds, 1) if seconds > 0 else None,
    }
    if kl is not None:
        kt = Totals(math.fsum(kl), n_tokens, n_bytes, len(seqs))
        result["kl"] = {
            "direction": "KL(model || reference)" if direction == "forward" else "KL(reference || model)",
            "nats": kt.nats,
            "tokens": n_tokens,
            "nats_per_token": kt.nats_per_token,
            "bits_per_token": kt.bits_per_token,
        }
    return result


def _print(results: dict) -> None:
    for name, r in results["datasets"].items():
        unit = ("document" if r["kind"] == "text" else "response") + ("" if r["docs"] == 1 else "s")
        print(f"{name}: {r['bits_per_token']:.4f} bits/token, {r['bits_per_byte']:.4f} bits/byte "
              f"({r['tokens']} tokens, {r['bytes']} bytes, {r['docs']} {unit})")
        if "kl" in r:
            k = r["kl"]
            print(f"{name}: {k['direction']} = {k['nats_per_token']:.6f} nats/token = "
                  f"{k['bits_per_token']:.6f} bits/token")


def run(cfg: Config, runs_root: Path) -> None:
    """Check the inputs, then measure every dataset in a `compress` run directory and print the rates."""
    from elasticity.models.hf import load_causal_lm, resolve_model_source

    _check_settings(cfg)
    datasets = load_datasets(cfg)
    model_src = resolve_model_source(cfg.model)
    ref_src = resolve_model_source(cfg.reference) if cfg.reference else None
    inputs: dict = {"model": model_src, **{f"data{i}": d.source for i, d in enumerate(datasets)}}
    if ref_src:
        inputs["reference"] = ref_src
    finished = planned_run(runs_root, STAGE, cfg, inputs, __name__)
    # models are loaded only when there is work, and before run_stage creates the run directory, so every
    # error they can raise leaves nothing behind; `work` is only called in that case
    if not finished.done:
        quiet_loading()
        device = resolve_device(cfg.device)
        model, tok = load_causal_lm(model_src, cfg.trust_remote_code, allow_pickle=cfg.allow_pickle)
        reference = None
        if ref_src:
            reference, ref_tok = load_causal_lm(ref_src, cfg.trust_remote_code, allow_pickle=cfg.allow_pickle)
            if not _same_tokenizer(tok, ref_tok):
                raise UserError(f"the tokenizers of {cfg.model} and {cfg.reference} differ; "
                                f"KL needs both models on the same tokens")
            reference.to(device)
        model.to(device)
        max_length = _max_length(cfg, model, tok)

    def work(run: Run) -> dict:
        results = {"model": cfg.model, "reference": cfg.reference, "max_length": max_length, "datasets": {}}
        for ds in datasets:
            r = measure(model, tok, ds, max_length, cfg.batch_size, cfg.bf16, reference, cfg.kl_direction)
            r.update(model=cfg.model, reference=cfg.reference)
            run.write_json(f"{ds.name}.json", r)
            run.log({k: v for k, v in r.items() if not isinstance(v, dict)})
            results["datasets"][ds.name] = r
        run.write_json("results.json", results)
        return {"device": str(device)}

    done = run_stage(runs_root, STAGE, cfg, inputs, work, device=str(resolve_device(cfg.device)))
    _print(json.loads(done.file("results.json").read_text()))
    print(f"results: {done.file('results.json')}")
