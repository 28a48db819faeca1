"""Records from files or Hugging Face datasets; tokenisation with prompt masking; low-padding batches."""
