"""RL with a scorer as the reward, through TRL: RLOO (the default) or GRPO, checkpointed at prompt counts.

The paper's perturbation by PPO cannot run through TRL 1.16: it has no PPO trainer any more. Of its online RL
trainers, RLOO is the nearest to the paper's PPO: a policy gradient on sampled completions with a KL penalty to
the starting model (`beta`), the value network replaced by the leave-one-out mean of the other completions of
the same prompt. GRPO differs by normalising advantages within each prompt's group. Both take reward functions,
so the toolkit's scorers (the world's oracle, VADER, classifiers, reward and cost models) are the reward, read
in the step's direction (a perturbation is rewarded for the opposite behaviour: `scorers.registry.Reversed`).

Every optimizer step takes `prompts_per_step` prompts, each answered `num_generations` times, in the given order
(no shuffling: the prompt order is the rebound's seed order, so Q2 counts prompts seen, and the first q prompts
of a run are a run on q prompts). `on_mark` is called after the step at which the prompts seen reach a mark.

TRL keeps a copy of the starting model as the KL reference while training (beta > 0): at 7B that is a second
set of weights in memory (`elasticity plan` counts it). An interrupted RL stage starts over (it has no resume).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

from elasticity.errors import UserError
from elasticity.ranks import no_accelerator

RL = ("rloo", "grpo")


@dataclass(frozen=True)
class RLConfig:
    """The RL objectives' settings (the rest: train.lr, train.betas, train.max_grad_norm, the decoding policy)."""

    prompts_per_step: int = 8  # prompts per optimizer step; Q marks must be multiples of it
    num_generations: int = 4  # completions per prompt (the leave-one-out / group baseline)
    beta: float = 0.05  # KL penalty toward the starting model (TRL's RLOO default; used for GRPO too)

    def check(self, marks: tuple[int, ...], key: str) -> None:
        if self.prompts_per_step < 1 or self.num_generations < 2 or self.beta < 0:
            raise UserError("rl.prompts_per_step must be >= 1, rl.num_generations >= 2 and rl.beta >= 0")
        off = [m for m in marks if m % self.prompts_per_step]
        if off:
            raise UserError(f"{key} {off[0]} is not a multiple of rl.prompts_per_step ({self.prompts_per_step}): "
                            "an RL step takes that many prompts")


def rl_train(algorithm: str, model, tok, prompts: list[str], reward: Callable[[list[str]], list[float]],
             score_prompt: bool, cfg: RLConfig, train, policy, marks: tuple[int, ...], seed: int, out_dir,
             on_mark: Callable[[int, int, int, object], None]) -> dict:
    """Train `model` in place by RL on `prompts` (in order) until the last mark; returns a summary.

    Args:
        reward: texts in, one float per text out, higher = what this step rewards.
        score_prompt: the reward reads prompt + completion (else the completion alone).
        train: the rebound's TrainConfig (lr, betas, weight decay, clipping); policy: its DecodingPolicy.
        on_mark: (prompts seen, steps, tokens, model) after the step that reaches a mark.
    """
    from datasets import Dataset
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    if algorithm not in RL:
        raise UserError(f"unknown RL objective '{algorithm}' (known: {', '.join(RL)})")
    per_step = cfg.prompts_per_step
    steps = marks[-1] // per_step
    config_cls, trainer_cls = (RLOOConfig, RLOOTrainer) if algorithm == "rloo" else (GRPOConfig, GRPOTrainer)
    args = config_cls(
        output_dir=str(out_dir), per_device_train_batch_size=per_step * cfg.num_generations,
        gradient_accumulation_steps=1, num_generations=cfg.num_generations, max_completion_length=policy.max_new_tokens,
        temperature=policy.temperature, top_p=policy.top_p, learning_rate=train.lr, adam_beta1=train.betas[0],
        adam_beta2=train.betas[1], weight_decay=train.weight_decay, max_grad_norm=train.max_grad_norm or 0.0,
        lr_scheduler_type="constant", warmup_steps=0, max_steps=steps, seed=seed, beta=cfg.beta,
        shuffle_dataset=False, save_strategy="no", report_to=[], logging_steps=1, disable_tqdm=True,
        use_cpu=no_accelerator(), bf16=train.bf16, gradient_checkpointing=train.gradient_checkpointing)

    def reward_func(prompts, completions, **_):
        return reward([p + c for p, c in zip(prompts, completions)] if score_prompt else list(completions))

    class Marks(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            seen = state.global_step * per_step
            if seen in marks:
                on_mark(seen, state.global_step, int(state.num_input_tokens_seen), model)
                model.train()

    dataset = Dataset.from_list([{"prompt": p} for p in prompts[: marks[-1]]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TRL's notes on CPU training and deprecated argument names
        trainer = trainer_cls(model=model, reward_funcs=[reward_func], args=args, train_dataset=dataset,
                              processing_class=tok, callbacks=[Marks()])
        for quiet in (PrinterCallback, ProgressCallback):  # results are files; no log dicts on stdout
            trainer.remove_callback(quiet)
        if trainer.ref_model is not None:
            # TRL loads its KL reference from the path the model's config names, which need not hold these weights
            # (a model merged from a LoRA adapter names its base there): the reference is the starting model itself
            trainer.ref_model.load_state_dict(model.state_dict())
        result = trainer.train()
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    kls = [r["kl"] for r in trainer.state.log_history if "kl" in r]
    return {"steps": trainer.state.global_step, "prompts": trainer.state.global_step * per_step,
            "tokens": int(trainer.state.num_input_tokens_seen), "final_train_loss": losses[-1] if losses else None,
            "train_seconds_this_session": round(result.metrics.get("train_runtime", 0.0), 3), "algorithm": algorithm,
            "first_step_kl": kls[0] if kls else None}  # 0 (to rounding): the KL reference is the starting model
