"""GPU memory per process and disk of a rebound or resistance run: first-order estimates for the code as it is.

Every estimate is a dict of named parts in bytes, so that `elasticity plan` can show what dominates:

- weights: every parameter in `dtype` (float32 4 bytes, bfloat16 2); LoRA adds its adapters in float32 (peft
  upcasts adapter weights whatever the base's dtype).
- gradients: one per trained parameter in its dtype (a full fine-tune: every weight; LoRA: the adapters).
- optimizer: AdamW's two moments in the trained parameters' dtype (torch's AdamW states follow the parameter: 8
  bytes a float32 parameter, 4 a bfloat16 one); adamw8bit (bitsandbytes) 2 bytes a parameter.
- autocast_copies: train.bf16 on float32 weights keeps a bfloat16 copy of every trained linear weight for the
  whole step (autocast's weight cache), or, with LoRA and no checkpointing, of every frozen one autograd keeps.
- activations: what autograd keeps for the backward pass, `SAVED` bytes a token and layer, counted on
  transformers' LLaMA decoder layer; with gradient checkpointing each layer's input plus one layer recomputed.
- logits_chunk: the output head runs on chunks of at most `likelihood.CHUNK_FLOATS` logits; in the backward pass
  a chunk's log-softmax and gradients are ~3.5 float32 temporaries of its size. head_gradient_temporary: the
  head's weight gradient of one chunk or micro-batch, before it is added to the others.
- training: weights + optimizer + autocast copies + the larger of the backward pass at the head (activations,
  logits chunk, the head's gradient) and at its end (every gradient); see `training_memory`.
- measuring: rebound measures inside the training loop, so the trained model and its optimizer state stay on the
  GPU (the gradients are freed), beside the largest of: a teacher-forced batch (eval.batch_tokens positions: one
  layer's transients, the final states, ~6 float32 chunks of log-probabilities and KL; the base's log-probabilities
  are read back from memory or `base_logprobs/`, so the base itself is on the GPU only in its own stage, measured
  against itself), the scorer's model (it comes on only to score), generation (the KV cache). Resistance measures
  after training (the optimizer freed) with a second model on the GPU for its KL controls.
- rl_training (an RL step, through TRL's trainer): the model state, TRL's own copy of the starting model as the
  KL reference (rl_reference: beta > 0 without LoRA), the activations of its batch (prompts_per_step x
  num_generations rows of prompt + completion) and its full-vocabulary logits of the completions (rl_logits:
  `TRL_LOGIT_COPIES` float32 copies, a bound).
- total: the larger of the training peak and the measuring peak.

Not counted: the CUDA context and the caching allocator's slack (`RUNTIME_BYTES`, added before a card is said to
fit), the scorer's activations. Measured against the peak resident memory of CPU training runs in
tests/test_plan_memory.py (within 25%).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from elasticity.experiments.measurement import CACHE_FLOATS  # base log-probs kept in memory up to this many
from elasticity.likelihood import CHUNK_FLOATS

GIB = 2**30
BYTES = {"float32": 4, "bfloat16": 2}
CARDS_GB = (24, 40, 80)  # the GPU sizes plan answers for; their memory is this many GiB (A100 40 GB: 40960 MiB)
RUNTIME_BYTES = 1.5 * GIB  # CUDA context (~0.5 GiB) and allocator slack, added before comparing with a card
ADAPTER_BYTES = 4  # peft makes LoRA weights float32 on a bfloat16 base (autocast_adapter_dtype)

# Bytes autograd keeps a token and decoder layer: A * hidden + K * kv_width + I * intermediate (+ 24: RoPE tables,
# softmax statistics), counted with torch.autograd.graph.saved_tensors_hooks (distinct storages, parameters
# excluded) on transformers 5's LlamaDecoderLayer (sdpa attention, gated MLP) through likelihood.token_scores, on
# CPU, at hidden 256-1024, kv 128-1024, intermediate 688-2752: every fit is exact to a few bytes. The key is
# (LoRA, weights dtype, bf16 autocast).
SAVED = {
    (False, "float32", False): (32, 8, 16),
    (False, "bfloat16", False): (20, 4, 8),
    (False, "float32", True): (30, 4, 8),  # bf16 casts; the residual stream stays float32
    (True, "float32", False): (24, 8, 16),  # frozen linears keep no input; each adapter keeps its own
    (True, "bfloat16", False): (36, 4, 10),  # each adapter keeps a float32 copy of its input
    (True, "float32", True): (24, 4, 8),  # + the frozen weights' bf16 copies autograd keeps (autocast_copies)
}
OUTSIDE = 5  # bytes a token and hidden unit outside the layers: the embedding output, final norm, head input
# float32 tensors of a logits chunk's size alive at once: in its backward pass (log-softmax output, the gradient
# scattered into it, the input gradient; 3.2 measured on CPU in float32) and in measuring (both models'
# log-probabilities, p, ln p - ln q, their product, the masked KL: 6)
CHUNK_TEMPORARIES = 3.5
MEASURING_TEMPORARIES = 6
# float32 copies of an RL batch's completion logits TRL 1.16's RLOO holds at its peak (log-softmax, entropy,
# temperature scaling, gradients): 6.8-10.1 measured from the peak resident memory of CPU runs; the bound is used
TRL_LOGIT_COPIES = 10


@dataclass(frozen=True)
class Shape:
    """What the estimates need of an architecture."""

    hidden: int
    layers: int
    kv: int  # width of the keys (and of the values): kv heads x head size
    intermediate: int
    vocab: int
    gated: bool  # a gated MLP (LLaMA, Qwen, Gemma: gate, up, down) keeps twice the MLP tensors of a plain one
    tied: bool  # the head is the input embedding

    @classmethod
    def of(cls, config) -> "Shape | None":
        """From a Hugging Face config (LLaMA-, Qwen-, Gemma-, GPT-NeoX-, GPT-2-style names); None if incomplete."""
        if config is None:
            return None
        c = config.get_text_config() if hasattr(config, "get_text_config") else config
        h = getattr(c, "hidden_size", None) or getattr(c, "n_embd", None)
        layers = getattr(c, "num_hidden_layers", None) or getattr(c, "n_layer", None)
        heads = getattr(c, "num_attention_heads", None) or getattr(c, "n_head", None)
        vocab = getattr(c, "vocab_size", None)
        if not (h and layers and heads and vocab):
            return None
        head_dim = getattr(c, "head_dim", None) or h // heads
        kv = (getattr(c, "num_key_value_heads", None) or heads) * head_dim
        inter = getattr(c, "intermediate_size", None) or getattr(c, "n_inner", None) or 4 * h
        gated = getattr(c, "model_type", "") not in ("gpt_neox", "gpt2", "gptj", "opt", "bloom", "falcon")
        return cls(h, layers, kv, inter, vocab, gated, bool(getattr(c, "tie_word_embeddings", False)))


# Architectures of well-known hub models, from their published config.json, for a plan on a machine where the model
# is not: activations, LoRA counts and the vocabulary need them (tests check each against its preset's parameters).
KNOWN = {
    "meta-llama/Llama-2-7b-hf": ("llama", dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                                               num_key_value_heads=32, intermediate_size=11008, vocab_size=32000)),
    "meta-llama/Llama-2-13b-hf": ("llama", dict(hidden_size=5120, num_hidden_layers=40, num_attention_heads=40,
                                                num_key_value_heads=40, intermediate_size=13824, vocab_size=32000)),
    "meta-llama/Meta-Llama-3-8B": ("llama", dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                                                 num_key_value_heads=8, intermediate_size=14336, vocab_size=128256)),
    "google/gemma-2b": ("gemma", dict(hidden_size=2048, num_hidden_layers=18, num_attention_heads=8,
                                      num_key_value_heads=1, head_dim=256, intermediate_size=16384,
                                      vocab_size=256000, tie_word_embeddings=True)),
    "Qwen/Qwen1.5-0.5B": ("qwen2", dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                                        num_key_value_heads=16, intermediate_size=2816, vocab_size=151936,
                                        tie_word_embeddings=False)),
    "Qwen/Qwen1.5-4B": ("qwen2", dict(hidden_size=2560, num_hidden_layers=40, num_attention_heads=20,
                                      num_key_value_heads=20, intermediate_size=6912, vocab_size=151936,
                                      tie_word_embeddings=False)),
    "Qwen/Qwen1.5-7B": ("qwen2", dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                                      num_key_value_heads=32, intermediate_size=11008, vocab_size=151936,
                                      tie_word_embeddings=False)),
    "TinyLlama/TinyLlama-1.1B": ("llama", dict(hidden_size=2048, num_hidden_layers=22, num_attention_heads=32,
                                               num_key_value_heads=4, intermediate_size=5632, vocab_size=32000)),
    **{f"EleutherAI/pythia-{size}": ("gpt_neox", dict(hidden_size=h, num_hidden_layers=n, num_attention_heads=a,
                                                      intermediate_size=4 * h, vocab_size=50304, rotary_pct=0.25))
       for size, h, n, a in (("160m", 768, 12, 12), ("410m", 1024, 24, 16), ("1b", 2048, 16, 8),
                             ("1.4b", 2048, 24, 16))},
    # scorers: a sequence classifier (RoBERTa-large, 2 labels) and a LLaMA-7B cost model (1 output)
    "siebert/sentiment-roberta-large-english": ("roberta", dict(
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096, vocab_size=50265,
        max_position_embeddings=514, type_vocab_size=1, num_labels=2)),
    "PKU-Alignment/beaver-7b-v1.0-cost": ("llama", dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                                                        num_key_value_heads=32, intermediate_size=11008,
                                                        vocab_size=32000, num_labels=1)),
}


def known_config(model: str):
    """The Hugging Face config of a model in `KNOWN` (by hub id, any @revision; TinyLlama's intermediate
    checkpoints share one architecture), else None."""
    from transformers import AutoConfig

    name = _known_name(model)
    if name not in KNOWN:
        return None
    model_type, kwargs = KNOWN[name]
    return AutoConfig.for_model(model_type, **kwargs)


def _known_name(model: str) -> str:
    name = model.split("@")[0]
    return "TinyLlama/TinyLlama-1.1B" if name.startswith("TinyLlama/TinyLlama-1.1B") else name


def known_parameters(model: str) -> int | None:
    """The exact parameter count of a model in `KNOWN` (a scorer's with its classification head), else None."""
    config = known_config(model)
    if config is None:
        return None
    return meta_parameters(config, classifier="num_labels" in KNOWN[_known_name(model)][1])


def meta_parameters(config, classifier: bool = False, trust_remote_code: bool = False) -> int:
    """The exact parameter count of a config's model (a sequence classifier's with `classifier`), built on the
    meta device: no weight is made."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    auto = AutoModelForSequenceClassification if classifier else AutoModelForCausalLM
    with torch.device("meta"):
        return auto.from_config(config, trust_remote_code=trust_remote_code).num_parameters()


def lora_parameters(config, lora, trust_remote_code: bool = False) -> int:
    """Trainable parameters of `lora` on the config's model: exact, from peft's own wrap on the meta device (the
    one `models.spec.with_lora` makes). Raises UserError when its targets match nothing."""
    import torch
    from transformers import AutoModelForCausalLM

    from elasticity.models.spec import with_lora

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    wrapped = with_lora(model, lora)
    return sum(p.numel() for p in wrapped.parameters() if p.requires_grad)


def activation_bytes(shape: Shape, tokens: int, dtype: str, autocast: bool, lora: bool, checkpointing: bool) -> float:
    """What autograd keeps for the backward pass of `tokens` positions (a micro-batch's rows x length)."""
    a, k, i = SAVED[(lora, dtype, autocast and dtype == "float32")]
    i = i if shape.gated else i / 2  # a plain MLP keeps fc1's output and its activation, a gated one four tensors
    layer = a * shape.hidden + k * shape.kv + i * shape.intermediate + 24
    outside = OUTSIDE * shape.hidden
    if checkpointing:  # each layer's input hidden state (the residual stream: float32 unless bf16 weights) + one
        residual = BYTES[dtype]  # layer recomputed in full during the backward pass
        return tokens * (shape.layers * residual * shape.hidden + layer + outside)
    return tokens * (shape.layers * layer + outside)


def chunk_floats(rows: int, width: int, vocab: int) -> int:
    """Logits in one chunk of the output head (`likelihood._chunk_positions`): rows x positions x vocab."""
    return rows * min(width, max(1, CHUNK_FLOATS // max(1, rows * vocab))) * vocab


def micro_batch(train, rows_factor: int = 1) -> tuple[int, int]:
    """(rows, width) of a micro-batch: batch_size rows of max_length (bound), or one padding-free row of
    pack_tokens; `rows_factor` 2 for a preference objective (both sides in a batch)."""
    return (1, train.pack_tokens) if train.pack_tokens else (train.batch_size * rows_factor, train.max_length)


def accumulates(train) -> bool:
    """Whether gradients accumulate over a step's micro-batches: grad_accum of them, or more rows where packing
    cuts a step."""
    return train.grad_accum > 1 or 0 < train.pack_tokens < train.batch_size * train.max_length


def training_memory(parameters: float, shape: Shape | None, dtype: str, train, lora_trainable: int | None = None,
                    rows_factor: int = 1) -> dict:
    """The training peak and its parts (bytes). `train` is a TrainConfig; `lora_trainable` the adapters'
    parameter count (None: a full fine-tune); `rows_factor` 2 for a preference objective (both sides in a batch).

    training = weights + optimizer + autocast copies + the larger of two moments of the backward pass: at the
    head, where it starts (every activation and the logits chunk alive, the head's gradient made; the other
    gradients only when micro-batches accumulate: set to None after each step), and at its end (every gradient,
    the activations freed)."""
    e = BYTES[dtype]
    lora = bool(lora_trainable)
    trained, te = (lora_trainable, ADAPTER_BYTES) if lora else (parameters, e)
    embedding = shape.vocab * shape.hidden if shape else 0
    parts = {"weights": parameters * e + (trained * te if lora else 0), "gradients": trained * te,
             "optimizer": trained * (2 if train.optimizer == "adamw8bit" else 2 * te)}
    copies = 0.0
    if train.bf16 and dtype == "float32":
        if not lora:  # every trained weight the forward pass casts (all but the input embedding, unless tied)
            copies = 2 * (parameters - (0 if shape and shape.tied else embedding))
        elif not train.gradient_checkpointing:  # frozen weights: cast per use, kept by autograd for the backward
            copies = 2 * (parameters - embedding)
    parts["autocast_copies"] = copies
    rows, width = micro_batch(train, rows_factor)
    accumulating = accumulates(train)
    head_gradient = 0.0 if lora else embedding * te  # LoRA leaves the head frozen
    if shape is None:
        parts.update(activations=0.0, logits_chunk=0.0, head_gradient_temporary=0.0)
    else:
        parts["activations"] = activation_bytes(shape, rows * width, dtype, train.bf16, lora,
                                                train.gradient_checkpointing)
        floats = chunk_floats(rows, width - 1, shape.vocab)
        parts["logits_chunk"] = CHUNK_TEMPORARIES * 4 * floats
        several = floats < rows * (width - 1) * shape.vocab or accumulating
        parts["head_gradient_temporary"] = head_gradient if several else 0.0
    at_head = parts["activations"] + parts["logits_chunk"] + parts["head_gradient_temporary"] + (
        parts["gradients"] if accumulating else head_gradient)
    parts["training"] = parts["weights"] + parts["optimizer"] + copies + max(at_head, parts["gradients"])
    return parts


def measuring_memory(shape: Shape | None, dtype: str, reference_parameters: float, width: int,
                     batch_size: int, batch_tokens: int | None, measured_positions: int | None = None,
                     scorer_parameters: float | None = None, scorer_dtype: str | None = None, policy=None,
                     prompt_tokens: int | None = None) -> dict:
    """What measuring brings onto the GPU beside the trained model (bytes); `measuring` is the largest of: a
    teacher-forced batch (with a second model of `reference_parameters` where one is on the GPU with it, and the
    base's log-probabilities where they are small enough to be kept there), the scorer's model, generation.

    A teacher-forced batch holds at most `batch_size` sequences of `width` tokens and `batch_tokens` positions
    (never less than one sequence); `measured_positions` (all of a measurement's positions) decides whether the
    base's log-probabilities are kept in memory; generation runs policy.batch_size rows of `prompt_tokens` (bound:
    `width`) + policy.max_new_tokens."""
    e = BYTES[dtype]
    parts = {"reference": reference_parameters * e,
             "scorer": (scorer_parameters or 0) * BYTES.get(scorer_dtype or "float32", 2),
             "teacher_forced": 0.0, "base_cache": 0.0, "generation": 0.0}
    if shape is not None:
        positions = max(width, min(batch_size * width, batch_tokens or math.inf))
        # one layer's transients (float32 norm, q/k/v/out, the MLP's three), both models' final hidden states,
        # the chunks of log-probabilities and KL; the base's log-probabilities when they are kept in memory
        layer = 8 * shape.hidden + 4 * shape.hidden * e + 3 * shape.intermediate * e + 2 * shape.hidden * e
        chunk = min(CHUNK_FLOATS, positions * shape.vocab)
        parts["teacher_forced"] = positions * layer + MEASURING_TEMPORARIES * 4 * chunk
        cached = (measured_positions or math.inf) * shape.vocab
        parts["base_cache"] = 4 * cached if cached <= CACHE_FLOATS else 0.0
        if policy is not None:
            prompt, rows = prompt_tokens or width, policy.batch_size
            kv = rows * (prompt + policy.max_new_tokens) * shape.layers * 2 * shape.kv * e
            logits = rows * prompt * shape.vocab  # the prompt pass keeps the last position's alone past a chunk
            parts["generation"] = kv + rows * prompt * layer + (logits if logits <= CHUNK_FLOATS else
                                                                  rows * shape.vocab) * e
    parts["measuring"] = max(parts["reference"] + parts["teacher_forced"] + parts["base_cache"], parts["scorer"],
                             parts["generation"])
    return parts


def fits(total: float) -> dict[str, bool]:
    """Whether `total` bytes and the runtime's own fit one GPU of each size in CARDS_GB."""
    return {f"{gb}GB": total + RUNTIME_BYTES <= gb * GIB for gb in CARDS_GB}


def _train_configs(cfg) -> list:
    return [cfg.train] if hasattr(cfg, "train") else [cfg.align, cfg.finetune]


def gpu_memory(parameters: float, config, cfg, lora_trainable: int | None = None,
               scorer_parameters: float | None = None, prompt_tokens: int | None = None) -> dict:
    """GPU memory per process of an experiment (a rebound or resistance Config, or a preset of one) on a model of
    `parameters` with Hugging Face `config` (None: activations and the head are not counted). Returns the parts
    of the training peak, of measuring, `training`, `measuring`, `total`, `peak` (which one) and `fits`."""
    from elasticity.train.preference import PREFERENCE

    shape = Shape.of(config)
    rebound = hasattr(cfg, "train")
    objectives = (cfg.align, cfg.perturb) if rebound else ("sft",)
    rows_factor = 2 if any(o in PREFERENCE for o in objectives) else 1
    training = max((training_memory(parameters, shape, cfg.dtype, t, lora_trainable, rows_factor)
                    for t in _train_configs(cfg)), key=lambda p: p["training"])
    width = max(t.max_length for t in _train_configs(cfg))
    ev = cfg.eval
    measured = (2 * ev.pairs + ev.docs) * width if rebound else None
    scored = rebound or getattr(cfg, "score", False)
    # rebound reads the base's log-probabilities back (memory or base_logprobs/): the base is on the GPU only in
    # its own stage, measured against itself; resistance's KL controls load a second model beside the trained one
    reference = 0.0 if rebound else parameters
    measure = measuring_memory(shape, cfg.dtype, reference, width, ev.batch_size, getattr(ev, "batch_tokens", None),
                               measured, scorer_parameters if scored else None, cfg.scorer.dtype, cfg.policy,
                               prompt_tokens)
    training.update(rl_memory(parameters, shape, cfg, training, width, lora_trainable) if rebound else {})
    training["training"] = max(training["training"], training.get("rl_training", 0.0))
    # rebound measures inside the training loop (the optimizer's state stays); resistance after it (freed)
    kept = training["weights"] + (training["optimizer"] if rebound else 0.0)
    out = {**training, **measure, "measuring": kept + measure["measuring"]}
    out["total"] = max(out["training"], out["measuring"])
    out["peak"] = "training" if out["training"] >= out["measuring"] else "measuring"
    return {**out, "fits": fits(out["total"])}


def rl_memory(parameters: float, shape: Shape | None, cfg, state: dict, width: int,
              lora_trainable: int | None) -> dict:
    """An RL step's peak through TRL (bytes), when the rebound aligns or perturbs by RL; else nothing.

    `state` is the SFT training estimate (its weights, optimizer, gradients, autocast copies are the same); prompts
    are bounded by `width` tokens."""
    from elasticity.train.rl import RL

    if cfg.align not in RL and cfg.perturb not in RL:
        return {}
    rows = cfg.rl.prompts_per_step * cfg.rl.num_generations
    completion = cfg.policy.max_new_tokens + 1  # TRL keeps the logits of the completion and the position before
    reference = parameters * BYTES[cfg.dtype] if cfg.rl.beta > 0 and not lora_trainable else 0.0
    activations = logits = 0.0
    if shape is not None:
        activations = activation_bytes(shape, rows * (width + cfg.policy.max_new_tokens), cfg.dtype, cfg.train.bf16,
                                       bool(lora_trainable), cfg.train.gradient_checkpointing)
        logits = TRL_LOGIT_COPIES * 4 * rows * completion * shape.vocab
    total = (state["weights"] + state["optimizer"] + state["gradients"] + state["autocast_copies"] + reference
             + activations + logits)
    return {"rl_reference": reference, "rl_activations": activations, "rl_logits": logits, "rl_training": total}


def disk(parameters: float, config, cfg, kept_checkpoints: int, lora_trainable: int | None = None) -> dict:
    """Peak disk of an experiment's runs (bytes): the kept checkpoints (safetensors in `dtype`, or LoRA adapters
    in float32), the running run's one resume state (its trained weights and optimizer state) with its
    replacement written beside it before the rename, and rebound's `base_logprobs/` (float32, every measured
    position x the vocabulary; bound: every sequence max_length long) where they are too large for memory.
    Measurements (CSV, JSONL) are negligible beside them."""
    e = BYTES[cfg.dtype]
    trained, te = (lora_trainable, ADAPTER_BYTES) if lora_trainable else (parameters, e)
    optimizer = max(2 * trained if t.optimizer == "adamw8bit" else 2 * trained * te for t in _train_configs(cfg))
    resume = trained * te + optimizer
    parts = {"kept_checkpoints": kept_checkpoints * trained * te, "resume_state": resume,
             "resume_replacement": resume, "base_logprobs": 0.0}
    shape = Shape.of(config)
    if hasattr(cfg, "train") and shape is not None:
        floats = (2 * cfg.eval.pairs + cfg.eval.docs) * cfg.train.max_length * shape.vocab
        parts["base_logprobs"] = 4 * floats if floats > CACHE_FLOATS else 0.0
    return {**parts, "total": sum(parts.values())}
