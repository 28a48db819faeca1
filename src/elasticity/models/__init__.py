"""Models: tiny LLaMA-style models built from a size preset, a byte-level BPE tokenizer, any HF causal LM."""
