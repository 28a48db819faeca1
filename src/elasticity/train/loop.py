"""The one training loop: language-model pre-training and SFT on `accelerate`, read top to bottom.

Invariances it guarantees (and tests check):
- The loss of an optimizer step is (sum of token NLLs) / (target tokens in the whole step), so any split
  into micro-batches and gradient-accumulation steps gives the same gradient as one big batch.
- The data order is a pure function of the seed, steps never cross a `boundaries` example count, and the
  schedule is constant or cosine over a known step count: training on the first q examples is a prefix
  of training on more (nested runs), and a resumed run replays exactly the steps it had left.

The objective is next-token NLL (pre-training, SFT) unless the caller passes a preference objective
(`train.preference`: DPO, IPO, SimPO, KTO over pairs); both are a sum of loss terms over a step divided by the
step's term count, so every invariance above holds for both.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, Literal

import torch

from elasticity.data.batching import Step, collate, collate_packed, ordered_indices, pack_step, plan_steps
from elasticity.data.tokenize import Example, pad_id
from elasticity.errors import UserError
from elasticity.likelihood import check_packed_attention, teacher_forced, token_scores
from elasticity.ranks import no_accelerator
from elasticity.runs import Run
from elasticity.train import sharding
from elasticity.train.checkpoints import (
    RESUME,
    Progress,
    drop_resume,
    load_resume,
    save_checkpoint,
    save_resume,
    write_checkpoint,
)

__all__ = ["RESUME", "Progress", "TrainConfig", "no_accelerator", "plan", "train", "write_checkpoint"]


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings. Defaults follow the paper's fine-tuning runs (constant lr, AdamW 0.9/0.95)."""

    lr: float = 1e-5  # peak learning rate of AdamW
    betas: tuple[float, float] = (0.9, 0.95)  # AdamW's (beta1, beta2)
    weight_decay: float = 0.0  # AdamW's decoupled weight decay
    schedule: Literal["constant", "cosine"] = "constant"  # after warm-up: constant, or cosine to min_lr_ratio
    warmup_steps: int = 0  # linear warm-up steps from lr / warmup_steps to lr
    min_lr_ratio: float = 0.1  # cosine floor, as a fraction of lr
    batch_size: int = 8  # examples per micro-batch, per process
    grad_accum: int = 1  # micro-batches per optimizer step
    epochs: int = 1  # passes over the data, each reshuffled with seed + epoch
    max_steps: int | None = None  # stop after this many optimizer steps; none = all the epochs' steps
    max_grad_norm: float | None = 1.0  # clip the gradient's global norm to this; none = no clipping
    bf16: bool = False  # bf16 autocast; parameters and optimizer stay in the model's dtype (fp32 master weights
    # when the model is loaded in float32; under ZeRO-3 always, as DeepSpeed keeps them)
    gradient_checkpointing: bool = False  # recompute each layer's activations in the backward pass (HF models):
    # activation memory of one layer instead of all, about a third more compute
    optimizer: Literal["adamw", "adamw8bit"] = "adamw"  # adamw8bit: bitsandbytes' 8-bit AdamW (CUDA only), whose
    # two moments take 2 bytes a parameter instead of 8
    seed: int = 0  # the data order and the torch generator
    max_length: int = 512  # tokens per example: longer ones are truncated (and counted); text blocks are this long
    shuffle: bool = True  # shuffle the examples with the seed (off: the given order)
    bucket: int = 1  # sort by length within windows of this many steps (1 = inside each step: same gradient,
    # less padding); 0 = keep the order
    pack_tokens: int = 0  # padding-free: a step's examples (the same ones) packed into micro-batches of at most this
    # many tokens, one row each, every example attending to itself only; 0 = padded micro-batches of batch_size
    eval_every: int = 0  # steps between evaluations; 0 = only at the start and the end
    eval_batch_size: int = 32  # sequences per forward pass of an evaluation
    checkpoint_steps: tuple[int, ...] = ()  # keep the model after these optimizer steps
    checkpoint_tokens: tuple[int, ...] = ()  # after the step that reaches this many input tokens
    checkpoint_examples: tuple[int, ...] = ()  # exactly after this many examples (steps are cut to fit)
    save_every: int = 0  # steps between resume states; 0 = only at checkpoints
    log_every: int = 1  # steps between training-loss records in metrics.jsonl

    def check(self, name: str = "train") -> None:
        """Reject settings no run can use, naming the key (`name` is the section: train, align, finetune).

        Raises:
            UserError: one line naming the key, the value and the rule.
        """
        def need(ok: bool, key: str, rule: str, value) -> None:
            if not ok:
                raise UserError(f"{name}.{key} must be {rule}, got {value!r}")

        need(math.isfinite(self.lr) and self.lr > 0, "lr", "a number > 0", self.lr)
        need(all(0 <= b < 1 for b in self.betas), "betas", "two numbers in [0, 1)", list(self.betas))
        need(self.weight_decay >= 0, "weight_decay", ">= 0", self.weight_decay)
        need(self.warmup_steps >= 0, "warmup_steps", ">= 0", self.warmup_steps)
        need(0 <= self.min_lr_ratio <= 1, "min_lr_ratio", "in [0, 1]", self.min_lr_ratio)
        for key in ("batch_size", "grad_accum", "epochs", "eval_batch_size", "log_every"):
            need(getattr(self, key) >= 1, key, ">= 1", getattr(self, key))
        need(self.max_steps is None or self.max_steps >= 1, "max_steps", ">= 1 (or none: every step)", self.max_steps)
        need(self.max_grad_norm is None or self.max_grad_norm > 0, "max_grad_norm", "> 0 (or none: no clipping)",
             self.max_grad_norm)
        need(self.optimizer in ("adamw", "adamw8bit"), "optimizer", "adamw or adamw8bit", self.optimizer)
        need(self.max_length >= 2, "max_length", ">= 2 (a target needs a token before it)", self.max_length)
        need(self.pack_tokens == 0 or self.pack_tokens >= self.max_length, "pack_tokens",
             f"0 (padded micro-batches) or at least max_length ({self.max_length}), so that every example fits",
             self.pack_tokens)
        for key in ("bucket", "eval_every", "save_every"):
            need(getattr(self, key) >= 0, key, ">= 0", getattr(self, key))
        for key in ("checkpoint_steps", "checkpoint_tokens", "checkpoint_examples"):
            marks = getattr(self, key)
            need(all(m >= 1 for m in marks), key, "positive counts", list(marks))
            repeated = sorted({m for m in marks if marks.count(m) > 1})
            if repeated:
                raise UserError(f"{name}.{key} repeats {repeated[0]}; give each checkpoint once")

    def check_plan(self, steps: int, name: str = "train") -> None:
        """Checkpoints must fall inside a run of `steps` optimizer steps."""
        late = [s for s in self.checkpoint_steps if s > steps]
        if late:
            raise UserError(f"{name}.checkpoint_steps {late[0]} is past the last step ({steps} steps in this run); "
                            "lower it or train longer")


class Objective(torch.nn.Module):
    """The language model with its loss: forward returns the next-token NLL (nats) of every target, (B, T-1).

    One module for both, so that a data-parallel wrapper's forward (which arms the gradient sync) runs the
    whole computation, the kernel's chunked output head included.
    """

    def __init__(self, lm):
        super().__init__()
        self.lm = lm

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None) -> torch.Tensor:
        # position t is predicted from tokens < t: the targets of input positions 0..T-2 are labels[:, 1:]
        return token_scores(self.lm, input_ids, labels[:, 1:], attention_mask, position_ids=position_ids).nll


class NextTokenLoss:
    """Pre-training and SFT: a step's loss is its summed token NLL over its target tokens.

    `packed`: micro-batches are single padding-free rows (`TrainConfig.pack_tokens`).
    """

    def __init__(self, packed: bool = False):
        self.packed = packed

    def setup(self, lm, examples, steps, pad, device, run, batch_size: int, is_main: bool) -> None:
        if self.packed:
            check_packed_attention(lm)

    def begin_step(self, lm, examples, step, index: int, pad: int, device, batch_size: int) -> None:
        pass

    def micro(self, model, examples: list[Example], idx: list[int], pad: int, device):
        """(the sum of this micro-batch's token NLLs, the same detached in float64, input tokens)."""
        chosen = [examples[i] for i in idx]
        batch = {k: v.to(device) for k, v in (collate_packed(chosen) if self.packed else collate(chosen, pad)).items()}
        nll = model(**batch)  # (B, T-1), 0 where there is no target
        return nll.sum(), nll.detach().sum(dtype=torch.float64), sum(len(ex.input_ids) for ex in chosen)


def _autocast(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()


def _lr_lambda(cfg: TrainConfig, total_steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "constant":
            return 1.0
        progress = (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def plan(examples: list[Example], cfg: TrainConfig, world: int = 1) -> list[Step]:
    """All optimizer steps of the run, epochs included (each epoch reshuffled by seed + epoch)."""
    steps = []
    for epoch in range(cfg.epochs):
        order = ordered_indices(len(examples), cfg.seed + epoch, cfg.shuffle)
        bounds = tuple(q for q in cfg.checkpoint_examples) if epoch == 0 else ()
        # Each process takes every world-th micro-batch of a step: the effective batch is
        # batch_size * grad_accum * world examples.
        steps += plan_steps(examples, order, cfg.batch_size, cfg.grad_accum * world, cfg.bucket, bounds)
    steps = steps[: cfg.max_steps] if cfg.max_steps else steps
    return [pack_step(examples, s, cfg.pack_tokens) for s in steps] if cfg.pack_tokens else steps


def _optimizer(params, cfg: TrainConfig, device: torch.device):
    if cfg.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise UserError("train.optimizer adamw8bit needs bitsandbytes: pip install bitsandbytes") from None
        if device.type != "cuda":
            raise UserError(f"train.optimizer adamw8bit runs on CUDA only (this run trains on {device.type}): use "
                            "adamw")
        return bnb.optim.AdamW8bit(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, eps=1e-8)
    # The fused kernel (CPU and CUDA) updates all parameters in one call; TRL uses it too.
    return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, eps=1e-8,
                             fused=device.type in ("cpu", "cuda"))


def train(
    model,
    tok,
    examples: list[Example],
    cfg: TrainConfig,
    run: Run,
    evals: dict[str, list[Example]] | None = None,
    on_step: Callable[[Progress, object], None] | None = None,
    progress_bar: bool = True,
    save_final: bool = True,
    objective=None,
    keep_checkpoints: bool = True,
) -> dict:
    """Train `model` in place on `examples`; write metrics, checkpoints and the final model into `run`.

    Args:
        model: a causal LM (HF or peft-wrapped), on the CPU; accelerate places it.
        tok: its tokenizer (saved beside every checkpoint; its pad id pads batches).
        examples: tokenised examples; their labels say which tokens carry loss (`Pair`s for a preference
            objective).
        cfg: optimisation settings.
        run: the run directory; `resume.pt` there, if present, is resumed from.
        evals: named evaluation sets, scored at start, every `eval_every` steps and at the end.
        on_step: called after every optimizer step with (progress, unwrapped model), e.g. for snapshots. Sharded
            (FSDP2 or ZeRO-3: `train.sharding`), the model is an ordinary copy on the main process at checkpoint
            marks, and None at other steps and on the other processes; the model passed in stays sharded.
        save_final: write the final model to `run/model` (off when the caller keeps only measurements).
        objective: the loss (`NextTokenLoss()` if none; `train.preference.PreferenceLoss` over pairs).
        keep_checkpoints: write a model at every checkpoint mark (off: the marks only cut steps and call
            `on_step` there, e.g. to measure the model in place; the resume state is still written at them).

    Returns:
        A summary dict (steps, examples, tokens, final train loss, last evaluation).
    """
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    if not examples:
        raise UserError("no training examples")
    sharding.check_launch()
    sharded = sharding.launched()  # "fsdp2" or "zero3": the loop shards the model itself (see train.sharding)
    if sharded and objective is not None:
        raise UserError(f"{sharding.NAMES[sharded]} shards next-token (sft) training only: launch a preference step "
                        "with --multi_gpu")
    accelerator = Accelerator(cpu=no_accelerator())
    parallel = sharding.strategy(accelerator, cfg.batch_size, cfg.max_grad_norm)
    world = accelerator.num_processes
    steps = plan(examples, cfg, world)
    if not steps:
        raise UserError("the training data gives no optimizer step; lower the batch size or add data")
    torch.manual_seed(cfg.seed)
    if not any(p.requires_grad for p in model.parameters()):
        raise UserError("the model has no trainable parameter (every weight is frozen)")
    if cfg.gradient_checkpointing:
        if not hasattr(model, "gradient_checkpointing_enable"):
            raise UserError("train.gradient_checkpointing needs a Hugging Face model")
        # non-reentrant: gradients reach LoRA weights without the inputs requiring grad
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    objective_module = Objective(model)
    params = parallel.shard(objective_module, accelerator.device)  # the shards, when sharded
    optimizer = _optimizer(params, cfg, accelerator.device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg, len(steps)))
    model, optimizer = parallel.wrap(objective_module, optimizer)
    lm = objective_module.lm  # the language model itself, wherever accelerate placed it
    device = accelerator.device
    pad = pad_id(tok)

    if objective is not None and cfg.pack_tokens:
        raise UserError("train.pack_tokens packs next-token examples only; set it to 0 for a preference objective")
    objective = objective or NextTokenLoss(packed=cfg.pack_tokens > 0)
    objective.setup(lm, examples, steps, pad, device, run, cfg.eval_batch_size, accelerator.is_main_process)
    progress = Progress()
    if run.file(RESUME).exists():
        progress = load_resume(run, model, optimizer, scheduler, accelerator, parallel)
        if accelerator.is_main_process:
            run.truncate_metrics(lambda r: r.get("step", 0) <= progress.step)
        print(f"[train] resuming {run.path} at step {progress.step}/{len(steps)}")
    elif accelerator.is_main_process:
        run.truncate_metrics(lambda r: False)

    evals = evals or {}
    token_marks = sorted(cfg.checkpoint_tokens)

    def do_eval() -> dict:  # on every process: the batches are shared out (every batch on each, when sharded)
        record = {}
        for name, data in evals.items():
            scored = teacher_forced(lm, data, pad, cfg.eval_batch_size, bf16=cfg.bf16,
                                    accelerator=None if sharded else accelerator)
            record[f"eval/{name}/loss"] = scored.loss
            record[f"eval/{name}/bits_per_token"] = scored.bits_per_token
        return record

    if evals and progress.step == 0:
        first = do_eval()
        if accelerator.is_main_process:
            run.log({"step": 0, "examples": 0, "tokens": 0, **first})

    model.train()
    bar = tqdm(total=len(steps), initial=progress.step, disable=not (progress_bar and accelerator.is_main_process),
               desc="train", unit="step", dynamic_ncols=True)
    last_eval: dict = {}
    train_loss = float("nan")
    t0 = time.perf_counter()
    for index, step in enumerate(steps[progress.step:], start=progress.step):
        mine = step.micro_batches[accelerator.process_index::world]
        if sharded:  # every forward is a collective: each process runs as many as the busiest one
            mine += [None] * (-(-len(step.micro_batches) // world) - len(mine))
        mine = mine or [[]]
        step_nll = torch.zeros((), dtype=torch.float64, device=device)
        step_tokens = 0
        with _autocast(device, cfg.bf16):
            objective.begin_step(lm, examples, step, index, pad, device, cfg.eval_batch_size)
        for m, idx in enumerate(mine):
            with parallel.accumulating(model, last=m == len(mine) - 1), _autocast(device, cfg.bf16):
                if idx is None:  # sharded, no share left here: a forward of another share, weighted 0
                    loss, _, _ = objective.micro(model, examples, step.micro_batches[0], pad, device)
                    parallel.backward(model, loss * 0.0)
                elif not idx:  # this process has no share of a short step: contribute a zero gradient
                    parallel.backward(model, sum(p.sum() * 0.0 for p in params))
                else:
                    loss, logged, tokens = objective.micro(model, examples, idx, pad, device)
                    # gradients are averaged over processes, so scale by `world` to get sum / n_targets overall
                    parallel.backward(model, loss * world / max(step.n_targets, 1))
                    step_nll += logged
                    step_tokens += tokens
        if world > 1:
            step_nll = accelerator.reduce(step_nll, reduction="sum")
            step_tokens = int(accelerator.reduce(torch.tensor(step_tokens, device=device), reduction="sum"))
        grad_norm = parallel.step(model, optimizer, params, cfg.max_grad_norm)  # clipped, stepped, zeroed
        scheduler.step()

        tokens_before = progress.tokens
        progress.step += 1
        progress.examples += sum(len(i) for i in step.micro_batches)
        progress.tokens += step_tokens
        train_loss = float(step_nll) / max(step.n_targets, 1)
        bar.update(1)
        bar.set_postfix(loss=f"{train_loss:.3f}")

        record = {"step": progress.step, "examples": progress.examples, "tokens": progress.tokens,
                  "train/loss": train_loss, "lr": scheduler.get_last_lr()[0]}
        if grad_norm is not None:
            record["train/grad_norm"] = grad_norm
        is_last = progress.step == len(steps)
        if evals and (is_last or (cfg.eval_every and progress.step % cfg.eval_every == 0)):
            last_eval = do_eval()
            record.update(last_eval)
        if accelerator.is_main_process and (is_last or progress.step % cfg.log_every == 0 or len(record) > 6):
            run.log(record)

        marks = []
        if progress.step in cfg.checkpoint_steps:
            marks.append(f"step-{progress.step}")
        marks += [f"tokens-{t}" for t in token_marks if tokens_before < t <= progress.tokens]
        if progress.examples in cfg.checkpoint_examples:
            marks.append(f"examples-{progress.examples}")
        # a sharded model is read (saved, measured) as an ordinary copy on the main process, None elsewhere
        reader = parallel.reader(lm, device, accelerator.is_main_process, marks)
        for name in marks if keep_checkpoints else ():
            save_checkpoint(reader, tok, run.file("checkpoints") / name, accelerator, progress)
        if on_step is not None:
            on_step(progress, reader)
        reader = None  # a gathered copy is freed before the next step
        if not is_last and (marks or (cfg.save_every and progress.step % cfg.save_every == 0)):
            save_resume(run, model, optimizer, scheduler, progress, accelerator, parallel)
    bar.close()

    if save_final:
        final = parallel.reader(lm, device, accelerator.is_main_process, ["model"])
        save_checkpoint(final, tok, run.file("model"), accelerator, progress)
    if accelerator.is_main_process:
        drop_resume(run)
    elapsed = time.perf_counter() - t0
    return {
        "steps": progress.step,
        "examples": progress.examples,
        "tokens": progress.tokens,
        "final_train_loss": train_loss,
        "last_eval": last_eval,
        "train_seconds_this_session": round(elapsed, 3),
        "processes": world,
        "sharding": sharded or "none",
    }
