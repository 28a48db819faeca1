"""Load any Hugging Face causal LM and its tokenizer from a local folder or, when asked, a hub id
(`org/name`, or `org/name@revision` for a branch, tag or commit: Pythia's `step3000`, TinyLlama's steps).

Safetensors are preferred whenever the folder has them; `trust_remote_code` stays off unless the caller
turns it on. A local-looking path that does not exist is a user error, never a silent hub lookup.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from elasticity.errors import UserError
from elasticity.hub import hub_cached, hub_reachable, model_folder, split_revision

ADAPTER = "adapter_config.json"  # a LoRA run saves its adapter; loading merges it into the base model


def _looks_local(source: str) -> bool:
    return source.startswith((".", "/", "~")) or split_revision(source)[0].count("/") > 1 or Path(source).exists()


def hub_arguments(source: str) -> tuple[str, dict]:
    """(name, from_pretrained arguments) for a model source: a hub id's revision is passed as `revision`, and a
    hub model is read from the local cache alone when the hub cannot be reached (instead of five retries and a
    traceback)."""
    if Path(source).is_dir():
        return source, {}
    name, revision = split_revision(source)
    kwargs = {} if hub_reachable() else {"local_files_only": True}
    return name, {**kwargs, "revision": revision} if revision else kwargs


def resolve_model_source(source: str, need: str = "config.json") -> str:
    """Check a model path or hub id and return it; a run directory resolves to its `model/` folder."""
    path = Path(source).expanduser()
    if path.is_dir():
        model_dir = path / "model"
        if (model_dir / "config.json").exists() or (model_dir / ADAPTER).exists():  # a training run of ours
            return str(model_dir)
        if not (path / need).exists() and not (need == "config.json" and (path / ADAPTER).exists()):
            raise UserError(f"folder {path} has no {need} (is it a Hugging Face model or tokenizer directory?)")
        return str(path)
    if _looks_local(source):
        raise UserError(f"model path does not exist: {source}")
    if not hub_reachable() and not hub_cached(source):
        raise UserError(f"model '{source}' is not a local folder, not in the Hugging Face cache, and the hub cannot "
                        "be reached: download it where there is a network, or give a local folder")
    return source  # a hub id such as "gpt2", "org/name" or "org/name@revision"


def adapter_base(folder: str) -> str | None:
    """The model a LoRA adapter folder applies to (its base_model_name_or_path, with `@revision` where it names
    one), or None when `folder` holds no adapter."""
    path = Path(folder) / ADAPTER
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is not a readable adapter config: {str(e).splitlines()[0]}") from None
    base = config.get("base_model_name_or_path") if isinstance(config, dict) else None
    if not base:
        raise UserError(f"{path} names no base model (base_model_name_or_path): set it to the model the adapter was "
                        "trained on")
    return f"{base}@{config['revision']}" if config.get("revision") else base


def resolve_device(name: str, key: str = "device"):
    """"auto" -> the first CUDA device if there is one, else the CPU; anything else is passed to torch."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"{key}: not a torch device: {name!r} (use auto, cpu, cuda or cuda:N)") from None


def context_length(config, tok=None) -> int:
    """A model's context length from its config (text_config first), else its tokenizer's, as lm-eval does.

    Raises:
        ValueError: neither says.
    """
    for cfg in (getattr(config, "text_config", None), config):
        for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
            value = getattr(cfg, attr, None) if cfg is not None else None
            if isinstance(value, int) and value > 0:
                return value
    value = getattr(tok, "model_max_length", None)
    if isinstance(value, int) and 0 < value < 10**9:  # HF's "unset" is a huge sentinel
        return value
    raise ValueError("cannot tell the model's context length; pass max_length")


def load_config(source: str, trust_remote_code: bool = False):
    """A model's Hugging Face config alone (no weights): what checks need to know of it."""
    from transformers import AutoConfig

    source = resolve_model_source(source)
    base = adapter_base(source) if Path(source).is_dir() else None
    if base is not None:  # an adapter does not change the architecture: its base's config is the model's
        try:
            return load_config(base, trust_remote_code)
        except UserError as e:
            raise UserError(f"the LoRA adapter {source} applies to '{base}': {e}") from None
    try:
        name, hub = hub_arguments(source)
        return AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code, **hub)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read the config of '{source}': {str(e).splitlines()[0]}") from None


def quiet_loading() -> None:
    """No "Loading weights" / "Writing model shards" bar per model: they would bury a command's own lines."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def load_tokenizer(source: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    source = resolve_model_source(source, need="tokenizer_config.json")
    try:
        name, hub = hub_arguments(source)
        tok = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code, **hub)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load a tokenizer from '{source}': {str(e).splitlines()[0]}") from None
    if tok.pad_token is None:  # batching needs a pad id; padded positions are always masked out
        tok.pad_token = tok.eos_token
    return tok


PICKLED = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")  # weight files that are pickles (loading one can run code)


def use_safetensors(source: str, allow_pickle: bool, key: str = "allow_pickle") -> bool | None:
    """How weights may be read: safetensors only, unless the user asked for pickles (`key` true).

    A local folder with safetensors reads them; one whose only weights are pickles is refused in one line. A hub
    model must have safetensors (transformers says so) unless pickles are allowed.
    """
    folder = Path(source)
    if not folder.is_dir():
        return None if allow_pickle else True
    if any(folder.glob("*.safetensors")):
        return True
    pickles = sorted(p.name for pattern in PICKLED for p in folder.glob(pattern))
    if pickles and not allow_pickle:
        raise UserError(f"{folder} holds its weights only as a pickle ({pickles[0]}), which can run code when it is "
                        f"read: convert it to safetensors, or set {key} true to load it anyway")
    return None


def load_causal_lm(source: str, trust_remote_code: bool = False, dtype: str | None = None, device: str | None = None,
                   allow_pickle: bool = False, key: str = "allow_pickle"):
    """Return (model, tokenizer) in eval mode, on `device` (a `resolve_device` name) or else on the CPU.

    Weights are read from safetensors only unless `allow_pickle` (see `use_safetensors`; `key` names the flag).
    A LoRA adapter folder loads as its base model with the adapter merged in (an adapter on a merged adapter
    too), every weight trainable as in any loaded model; its tokenizer is the folder's, else the base's.
    `model.name_or_path` is where the model came from, which a LoRA trained on it records as its base: an
    absolute folder (the adapter then loads from any working directory) or the hub id with its @revision.
    """
    source = resolve_model_source(source)
    base = adapter_base(source) if Path(source).is_dir() else None
    if base is None:
        model = _from_pretrained(source, trust_remote_code, dtype, allow_pickle, key)
        tok = load_tokenizer(source, trust_remote_code)
    else:
        model, tok = _merged(source, base, trust_remote_code, dtype, allow_pickle, key)
    model.name_or_path = str(Path(source).resolve()) if Path(source).is_dir() else source
    model.eval()
    if device is not None:
        model.to(resolve_device(device))
    return model, tok


def _from_pretrained(source: str, trust_remote_code: bool, dtype: str | None, allow_pickle: bool, key: str):
    import torch
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    kwargs = {"trust_remote_code": trust_remote_code, "use_safetensors": use_safetensors(source, allow_pickle, key),
              "dtype": getattr(torch, dtype) if dtype else torch.float32}
    name, hub = hub_arguments(source)
    try:
        return AutoModelForCausalLM.from_pretrained(name, **kwargs, **hub)
    except (OSError, ValueError, SafetensorError) as e:  # missing, unreadable or cut-short weights
        raise UserError(f"cannot load a causal LM from '{source}': {str(e).splitlines()[0]}") from None


def _merged(source: str, base: str, trust_remote_code: bool, dtype: str | None, allow_pickle: bool, key: str):
    """(the base model with the adapter in folder `source` merged into its weights, the tokenizer)."""
    from peft import PeftModel
    from safetensors import SafetensorError

    try:
        model, tok = load_causal_lm(base, trust_remote_code, dtype, None, allow_pickle, key)
    except UserError as e:
        raise UserError(f"the LoRA adapter {source} applies to '{base}': {e}") from None
    use_safetensors(source, allow_pickle, key)  # the adapter's weights are weights too
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # peft reads an attribute transformers 5 renamed
            model = PeftModel.from_pretrained(model, source).merge_and_unload()
    except (OSError, ValueError, RuntimeError, SafetensorError) as e:  # missing weights, shapes of another model
        raise UserError(f"cannot apply the LoRA adapter {source} to '{base}': {str(e).splitlines()[0]}") from None
    # peft loads an adapter frozen, for inference; merged, the model is trained like any other (or the optimizer
    # would get no parameter)
    model.requires_grad_(True)
    if (Path(source) / "tokenizer_config.json").is_file():
        tok = load_tokenizer(source, trust_remote_code)
    return model, tok


def parameter_count(source: str, trust_remote_code: bool = False) -> float | None:
    """The exact parameter count of a model on this machine (a folder, a run directory, a cached hub id), from its
    config alone: the model is built on the meta device, so no weight is read and no memory is taken. None where
    no config is here or it cannot be built."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = model_folder(source)
    if folder is None:
        return None
    if (folder / "model" / "config.json").is_file() or (folder / "model" / ADAPTER).is_file():  # a run directory
        folder = folder / "model"
    if not (folder / "config.json").is_file() and (folder / ADAPTER).is_file():  # merged, it has its base's count
        try:
            base = adapter_base(str(folder))
        except UserError:
            return None
        return parameter_count(base, trust_remote_code)
    try:
        config = AutoConfig.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
        with torch.device("meta"):
            return float(AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code).num_parameters())
    except Exception:  # noqa: BLE001 - an unreadable config means the count is unknown, not an error
        return None


def whole_copy(lm, state: dict, device):
    """A new ordinary model of sharded `lm`'s class and config holding the whole weights `state`, on `device` (what
    a sharded model is measured and saved as: `train.sharding`, `train.zero3`)."""
    import torch

    with torch.device("meta"):
        copy = type(lm)(lm.config)
    copy.load_state_dict(state, assign=True)
    for name, buffer in lm.named_buffers():  # buffers are never sharded; the state dict lacks the non-persistent
        owner, _, attr = name.rpartition(".")  # ones (rotary frequencies), still on the meta device here
        copy.get_submodule(owner)._buffers[attr] = buffer.detach().clone()
    if getattr(lm.config, "tie_word_embeddings", False):
        copy.tie_weights()  # assign=True gave the head its own tensor; tie it back to the embeddings
    copy.generation_config = lm.generation_config
    return copy.to(device).train(lm.training)
