"""Batched sampling with a KV cache under an explicit, recorded decoding policy (`elasticity generate`).

Every (prompt, sample) pair draws from its own random generator seeded by (policy seed, prompt index,
sample index), so a sample does not depend on the batch it was drawn in, on the batch size, or on the
other prompts: the same policy gives the same texts whatever the hardware batch.
"""

from __future__ import annotations

import inspect
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from elasticity.config import InputPath
from elasticity.data.records import Fields, load_records
from elasticity.data.tokenize import pad_id
from elasticity.errors import UserError
from elasticity.files import write_jsonl
from elasticity.likelihood import CHUNK_FLOATS
from elasticity.models.hf import context_length, load_causal_lm, load_config, load_tokenizer, resolve_model_source
from elasticity.runs import run_stage


@dataclass(frozen=True)
class DecodingPolicy:
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0  # nucleus sampling: the smallest set of tokens whose mass reaches top_p; 1 = all
    max_new_tokens: int = 64  # a response ends at EOS or after this many tokens
    samples_per_prompt: int = 1  # responses drawn per prompt
    seed: int = 0  # every (prompt, sample) draws from its own generator seeded by (seed, prompt, sample)
    batch_size: int = 64  # rows per forward pass; does not change the samples

    def check(self) -> None:
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.max_new_tokens < 1 or self.samples_per_prompt < 1:
            raise UserError(
                "decoding policy needs temperature >= 0, 0 < top_p <= 1, max_new_tokens >= 1, samples_per_prompt >= 1"
            )


def check_context(lengths: dict[int, int], policy: DecodingPolicy, config, tok=None) -> None:
    """Every prompt (index -> its token count) fits in the model's context, and so does its generation where the
    model's positions are a learned table (GPT-2's, OPT's: a position past it fails mid-run). Rotary positions
    (LLaMA, Qwen, Gemma, ...) have no table, so a generation may run past the context the model was trained on.
    A model that does not say its context is not checked."""
    context = declared_context(config, tok)
    if context is None or not lengths:
        return
    i = max(lengths, key=lengths.__getitem__)
    if lengths[i] > context:
        raise UserError(f"prompt {i} is longer than the model's context: {lengths[i]} tokens > {context}; shorten it")
    if not rotary(config) and lengths[i] + policy.max_new_tokens > context:
        raise UserError(f"prompt {i} and its generation are longer than the model's context (a table of learned "
                        f"positions): {lengths[i]} tokens + policy.max_new_tokens {policy.max_new_tokens} > {context}; "
                        "shorten it or lower policy.max_new_tokens")


def rotary(config) -> bool:
    """Whether a model's positions are rotary (computed for any position) rather than a learned table."""
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    return any(getattr(cfg, name, None) is not None for name in
               ("rope_theta", "rope_parameters", "rope_scaling", "rotary_pct", "rotary_dim", "partial_rotary_factor"))


def prompt_lengths(tok, prompts: list[str]) -> dict[int, int]:
    return {i: len(ids) for i, ids in enumerate(tok(list(prompts), add_special_tokens=True)["input_ids"])}


def declared_context(config, tok=None) -> int | None:
    """The model's context length, or None if it does not say."""
    try:
        return context_length(config, tok)
    except ValueError:
        return None


def _row_generator(seed: int, prompt_index: int, sample_index: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + prompt_index) * 10_007 + sample_index)
    return g


def _pick(logits: torch.Tensor, policy: DecodingPolicy, gens: list[torch.Generator]) -> torch.Tensor:
    """Next token per row from (B, V) logits: greedy, or temperature + nucleus sampling per row."""
    if policy.temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / policy.temperature, dim=-1)  # (B, V)
    if policy.top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < policy.top_p  # smallest set whose mass reaches top_p
        sorted_p = sorted_p * keep
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return torch.stack([torch.multinomial(probs[i], 1, generator=g)[0] for i, g in enumerate(gens)])


@torch.inference_mode()
def generate(model, tok, prompts: list[str], policy: DecodingPolicy, indices: list[int] | None = None) -> list[dict]:
    """Sample `policy.samples_per_prompt` continuations of each prompt (or only of the prompts at `indices`).

    Returns one record per sample: prompt_index, sample_index, prompt, response (decoded, special tokens
    dropped), new_tokens, and finished (True if the model ended the text with EOS). With `indices`, each
    sample is the one a run over all prompts draws for that (prompt_index, sample_index).
    """
    policy.check()
    # a peft wrapper's forward hides the model's signature (the cache argument below); its LoRA layers are in place
    model = model.get_base_model() if hasattr(model, "get_base_model") else model
    model.eval()
    device = next(model.parameters()).device
    wanted = range(len(prompts)) if indices is None else indices
    encoded = {i: tok(prompts[i], add_special_tokens=True)["input_ids"] for i in wanted}
    check_context({i: len(ids) for i, ids in encoded.items()}, policy, model.config, tok)
    rows = [(i, s) for i in wanted for s in range(policy.samples_per_prompt)]
    rows.sort(key=lambda r: len(encoded[r[0]]))  # similar lengths share a batch: less left padding
    out = []
    for start in range(0, len(rows), policy.batch_size):
        batch = rows[start:start + policy.batch_size]
        out += _generate_batch(model, tok, [encoded[i] for i, _ in batch], batch, policy, pad_id(tok), device)
    out.sort(key=lambda r: (r["prompt_index"], r["sample_index"]))
    for r in out:
        r["prompt"] = prompts[r["prompt_index"]]
    return out


def _generate_batch(model, tok, ids: list[list[int]], rows, policy, pad, device) -> list[dict]:
    from transformers import DynamicCache

    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for r, x in enumerate(ids):  # left padding: every row's last prompt token sits at the same position
        input_ids[r, width - len(x):] = torch.tensor(x)
        mask[r, width - len(x):] = 1
    input_ids, mask = input_ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, T): real tokens count from 0
    gens = [_row_generator(policy.seed, i, s) for i, s in rows]
    # transformers renamed `past_key_values` to `cache` within 5.x; pass whichever this version takes.
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    cache = DynamicCache()
    new = torch.empty((len(ids), 0), dtype=torch.long, device=device)
    done = torch.zeros(len(ids), dtype=torch.bool, device=device)
    step_ids, step_pos = input_ids, positions
    # The prompt pass would compute logits at every prompt position; only the last is sampled from. Where those
    # logits are large (a 152k vocabulary: 128 prompts x 64 tokens is 5 GB of float32) ask for the last alone;
    # small ones are computed as before, so no number of a small model changes.
    head = model.get_output_embeddings()
    vocab = head.weight.shape[0] if head is not None else 0
    last_only = ({"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(type(model).forward).parameters
                 and input_ids.numel() * vocab > CHUNK_FLOATS else {})
    for _ in range(policy.max_new_tokens):
        logits = model(input_ids=step_ids, attention_mask=mask, position_ids=step_pos,
                       use_cache=True, **{cache_arg: cache}, **last_only).logits[:, -1]  # (B, V)
        token = _pick(logits.cpu(), policy, gens).to(device)
        token = torch.where(done, torch.full_like(token, pad), token)
        new = torch.cat([new, token[:, None]], dim=1)
        done |= token == tok.eos_token_id
        if bool(done.all()):
            break
        step_ids = token[:, None]
        step_pos = step_pos[:, -1:] + 1
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)  # finished rows: output ignored
    records = []
    for r, (i, s) in enumerate(rows):
        toks = new[r].tolist()
        finished = tok.eos_token_id in toks
        if finished:
            toks = toks[: toks.index(tok.eos_token_id)]
        records.append({
            "prompt_index": i, "sample_index": s,
            "response": tok.decode(toks, skip_special_tokens=True),
            "new_tokens": len(toks) + int(finished), "finished": finished,
        })
    return records


@dataclass(frozen=True)
class Config:
    model: InputPath = ""  # model folder, run directory or hub id
    prompts: InputPath = ""  # JSONL/JSON records with a prompt field
    prompt_field: str = "prompt"  # the records' field that holds the prompt
    policy: DecodingPolicy = field(default_factory=DecodingPolicy)
    trust_remote_code: bool = False  # let a hub checkpoint run its own modelling code
    allow_pickle: bool = False  # read weights stored only as a pickle (.bin), which can run code when read


def generate_stage(cfg: Config, runs_root: Path):
    """Run (or reuse) the generate stage: `samples.jsonl` plus the policy in `policy.json`."""
    if not cfg.model or not cfg.prompts:
        raise UserError("generate needs --model and --prompts")
    cfg.policy.check()
    resolve_model_source(cfg.model)
    prompts = [r["prompt"] for r in load_records(cfg.prompts, ("prompt",), Fields(prompt=cfg.prompt_field))]
    tok = load_tokenizer(cfg.model, cfg.trust_remote_code)
    check_context(prompt_lengths(tok, prompts), cfg.policy, load_config(cfg.model, cfg.trust_remote_code), tok)

    def work(run) -> None:
        model, tok = load_causal_lm(cfg.model, cfg.trust_remote_code, allow_pickle=cfg.allow_pickle)
        samples = generate(model, tok, prompts, cfg.policy)
        write_jsonl(run.file("samples.jsonl"), samples)
        run.write_json("policy.json", asdict(cfg.policy))

    return run_stage(runs_root, "generate", cfg, {"model": cfg.model, "prompts": cfg.prompts}, work,
                     seed=cfg.policy.seed)


def run(cfg: Config, runs_root: Path) -> None:
    result = generate_stage(cfg, runs_root)
    print(result.file("samples.jsonl"))
