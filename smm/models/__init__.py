"""Base models: the tiny recipe, hub names, local folders and GGUF files."""
