"""What model a stage starts from: an existing model (folder, run directory, hub id) or a tiny preset
built from scratch with a given tokenizer; optionally wrapped with LoRA adapters (`with_lora`, the one place
that wraps: `elasticity train` and the experiments' trained models use it)."""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

from elasticity.config import InputPath
from elasticity.errors import UserError
from elasticity.hub import split_revision


@dataclass(frozen=True)
class LoraSettings:
    """LoRA adapters (peft) on a model to train: only they learn, and a checkpoint saves them alone."""

    r: int = 0  # adapter rank; 0 = off: every weight is trained
    alpha: float = 16.0  # scaling: the update is (alpha / r) B A
    dropout: float = 0.0  # dropout on the adapter branch
    targets: str = "all-linear"  # modules that get adapters (peft's target_modules): all-linear, or a regular
    # expression matched against whole module names (e.g. '.*(q|v)_proj')

    def check(self, prefix: str = "lora.") -> None:
        """Reject values peft cannot use, naming the key (`prefix` + field)."""
        if self.r < 0:
            raise UserError(f"{prefix}r must be >= 0 (0 = train every weight), got {self.r}")
        if self.r > 0 and not self.alpha > 0:
            raise UserError(f"{prefix}alpha must be > 0, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise UserError(f"{prefix}dropout must be in [0, 1), got {self.dropout}")
        if not self.targets.strip():
            raise UserError(f"{prefix}targets is empty: give all-linear or a regular expression over module names")
        if self.targets != "all-linear":
            try:
                re.compile(self.targets)
            except re.error as e:
                raise UserError(f"{prefix}targets {self.targets!r} is not a regular expression ({e})") from None


def with_lora(model, lora: LoraSettings, seed: int = 0, key: str = "lora.targets"):
    """`model` wrapped with new LoRA adapters (B = 0: at first it computes exactly what `model` does).

    The adapters' random A is drawn from `seed` alone and the global random state is left as it was, so a
    repeated or resumed stage starts from the same adapters. A checkpoint of the wrapped model is the adapters
    alone; the model they apply to is `model.name_or_path` (`load_causal_lm` makes it an absolute folder, or a
    hub id with its @revision), recorded as peft's base_model_name_or_path and revision.

    Raises:
        UserError: `lora.targets` matches no module peft can adapt (`key` names the setting).
    """
    import torch
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.targets,
                        task_type="CAUSAL_LM")
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():  # adapters are made on the CPU, then moved
        torch.default_generator.manual_seed(seed)
        warnings.simplefilter("ignore", FutureWarning)  # peft reads an attribute transformers 5 renamed
        try:
            wrapped = get_peft_model(model, config)
        except ValueError as e:  # "Target modules ... not found in the base model.", or one peft cannot adapt
            first = str(e).splitlines()[0]  # (the rest: the module's whole repr)
            reason = first if first.endswith(".") else f"{first.rstrip('(')} is not a layer peft can adapt"
            raise UserError(f"{key} {lora.targets!r}: {reason}") from None
    # peft would record name_or_path as it is (a revision inside it is not a hub id it can load)
    name, revision = split_revision(model.name_or_path) if model.name_or_path else (None, None)
    wrapped.peft_config["default"].base_model_name_or_path = name
    wrapped.peft_config["default"].revision = revision
    return wrapped


def save_model(model, folder) -> None:
    """Write `model` into `folder` as safetensors: a LoRA-wrapped model as its trained adapter alone (its config
    names the base model), any other model whole."""
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        model.save_pretrained(folder, safe_serialization=True)
        return
    # "default" only: TRL adds a frozen copy ("ref") as its KL reference. No look-up of the base's vocabulary
    # (peft's "auto" asks the hub when the base folder has no config.json): we never resize it.
    model.save_pretrained(folder, safe_serialization=True, selected_adapters=["default"], save_embedding_layers=False)
    (Path(folder) / "README.md").unlink(missing_ok=True)  # peft's model card: placeholders only


def check_lora_targets(lora: LoraSettings, model_config, trust_remote_code: bool = False,
                       key: str = "lora.targets") -> None:
    """The adapters fit the model: `with_lora` is tried on a copy built on the meta device (no weight read, no
    memory), so a `targets` matching nothing fails before any run directory exists."""
    import torch
    from transformers import AutoModelForCausalLM

    if lora.r == 0:
        return
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_config, trust_remote_code=trust_remote_code)
    with_lora(model, lora, key=key)


@dataclass(frozen=True)
class ModelConfig:
    path: InputPath | None = None  # HF model folder, run directory (its model/), or hub id
    size: str | None = None  # or: a tiny preset built from scratch (models.tiny.SIZES: "0.1m" ... "5m") ...
    tokenizer: InputPath | None = None  # ... with this tokenizer folder
    init_seed: int = 0  # random initialisation of a tiny preset, and of LoRA adapters
    trust_remote_code: bool = False  # let a hub checkpoint run its own modelling code
    allow_pickle: bool = False  # read weights stored only as a pickle (.bin), which can run code when read
    lora_r: int = 0  # > 0 trains LoRA adapters of this rank instead of all weights
    lora_alpha: float = 16.0  # LoRA scaling: the update is (alpha / r) B A
    lora_dropout: float = 0.0  # dropout on the LoRA branch
    lora_targets: str = "all-linear"  # modules that get adapters (peft's target_modules)

    @property
    def lora(self) -> LoraSettings:
        return LoraSettings(self.lora_r, self.lora_alpha, self.lora_dropout, self.lora_targets)

    def check(self) -> None:
        """Reject a starting model no stage can build, naming the key."""
        from elasticity.models.tiny import check_size

        if bool(self.path) == bool(self.size):
            raise UserError("set exactly one of model.path (an existing model) and model.size (a tiny preset)")
        if self.size:
            check_size(self.size)
        if self.size and not self.tokenizer:
            raise UserError("model.size builds a model from scratch and needs model.tokenizer (a tokenizer folder)")
        self.lora.check("model.lora_")
        if self.size and self.lora_r > 0:  # its adapters would name no base model to load them on
            raise UserError("model.lora_r trains adapters on an existing model: set model.path, not model.size (a "
                            "preset built from scratch is saved nowhere for them to apply to)")


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
        model = with_lora(model, cfg.lora, cfg.init_seed, key="model.lora_targets")
    model.train()
    return model, tok
