"""What model a stage starts from: an existing model (folder, run directory, hub id) or a tiny preset
built from scratch with a given tokenizer; optionally wrapped with LoRA adapters."""

from __future__ import annotations

from dataclasses import dataclass

from elasticity.config import InputPath
from elasticity.errors import UserError


@dataclass(frozen=True)
class ModelConfig:
    path: InputPath | None = None  # HF model folder, run directory (its model/), or hub id
    size: str | None = None  # or: a tiny preset built from scratch (models.tiny.SIZES: "0.1m" ... "5m") ...
    tokenizer: InputPath | None = None  # ... with this tokenizer folder
    init_seed: int = 0  # random initialisation of a tiny preset
    trust_remote_code: bool = False  # let a hub checkpoint run its own modelling code
    allow_pickle: bool = False  # read weights stored only as a pickle (.bin), which can run code when read
    lora_r: int = 0  # > 0 trains LoRA adapters of this rank instead of all weights
    lora_alpha: float = 16.0  # LoRA scaling: the update is (alpha / r) B A
    lora_dropout: float = 0.0  # dropout on the LoRA branch
    lora_targets: str = "all-linear"  # modules that get adapters (peft's target_modules)

    def check(self) -> None:
        """Reject a starting model no stage can build, naming the key."""
        from elasticity.models.tiny import check_size

        if bool(self.path) == bool(self.size):
            raise UserError("set exactly one of model.path (an existing model) and model.size (a tiny preset)")
        if self.size:
            check_size(self.size)
        if self.size and not self.tokenizer:
            raise UserError("model.size builds a model from scratch and needs model.tokenizer (a tokenizer folder)")
        if self.lora_r < 0:
            raise UserError(f"model.lora_r must be >= 0 (0 = train every weight), got {self.lora_r}")
        if self.lora_r > 0 and not self.lora_alpha > 0:
            raise UserError(f"model.lora_alpha must be > 0, got {self.lora_alpha}")
        if not 0 <= self.lora_dropout < 1:
            raise UserError(f"model.lora_dropout must be in [0, 1), got {self.lora_dropout}")


def model_input(cfg: ModelConfig) -> str:
    """The string that identifies the starting model for hashing (a path is hashed by content)."""
    if cfg.path:
        return cfg.path
    return str(cfg.tokenizer)


def load_model_for_training(cfg: ModelConfig, max_length: int):
    """Return (model, tokenizer) ready to train, in train mode, on the CPU."""
    from elasticity.models.hf import load_causal_lm, load_tokenizer
    from elasticity.models.tiny import build_tiny_model

    cfg.check()
    if cfg.size:
        tok = load_tokenizer(cfg.tokenizer)
        model = build_tiny_model(cfg.size, len(tok), max_length, cfg.init_seed)
    else:
        model, tok = load_causal_lm(cfg.path, trust_remote_code=cfg.trust_remote_code, allow_pickle=cfg.allow_pickle,
                                    key="model.allow_pickle")
        rows = model.get_input_embeddings().num_embeddings
        if len(tok) > rows:  # ids past the embedding would fail mid-run
            raise UserError(f"the tokenizer of {cfg.path} has {len(tok)} tokens but the model's embedding has {rows} "
                            "rows; give the model its own tokenizer")
    if cfg.lora_r > 0:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                          target_modules=cfg.lora_targets, task_type="CAUSAL_LM")
        model = get_peft_model(model, lora)
    model.train()
    return model, tok
