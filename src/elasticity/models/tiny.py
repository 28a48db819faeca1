"""Tiny LLaMA-style models from size presets, and a byte-level BPE tokenizer trained on a corpus.

LLaMA blocks (RMSNorm, SwiGLU, RoPE, no dropout, tied embeddings) are the fast choice on a CPU. The
parameter counts in `SIZES` are for the embedded world's tokenizer (vocab 1024) and include embeddings.
"""

from __future__ import annotations

from typing import Iterable

from elasticity.errors import UserError

# name -> (hidden size, layers, heads, MLP size)
# The scaling ladder is 0.1m / 0.2m / 0.5m / 1m (92k to 984k parameters, 10.7x); 2m and 5m lie past the point
# where the default world rewards capacity (README, "The size ladder").
SIZES: dict[str, tuple[int, int, int, int]] = {
    "0.1m": (40, 2, 4, 160),
    "0.2m": (64, 2, 4, 256),
    "0.5m": (96, 3, 4, 288),
    "1m": (128, 4, 4, 384),
    "2m": (160, 5, 4, 480),
    "5m": (256, 6, 8, 768),
}

SPECIAL = {"bos": "<|bos|>", "eos": "<|endoftext|>", "pad": "<|pad|>"}


def check_size(size: str) -> None:
    if size not in SIZES:
        raise UserError(f"unknown model size preset '{size}' (choose from {', '.join(SIZES)})")


def build_tiny_model(size: str, vocab_size: int, max_length: int, seed: int):
    """A randomly initialised LLaMA-style causal LM; same seed, same weights."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    check_size(size)
    hidden, layers, heads, mlp = SIZES[size]
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=mlp,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_length,
        tie_word_embeddings=True,
        attention_dropout=0.0,
        rms_norm_eps=1e-5,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1024):
    """Byte-level BPE trained on `texts`, wrapped as a `PreTrainedTokenizerFast`.

    Like LLaMA's tokenizer it puts BOS in front of every encoded text (`add_special_tokens=True`), so a
    document, a prompt and a packed pre-training block all start the way the model saw documents start.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    bos = SPECIAL["bos"]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, tok.token_to_id(bos))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=SPECIAL["bos"], eos_token=SPECIAL["eos"], pad_token=SPECIAL["pad"]
    )


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
