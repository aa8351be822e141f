"""What train, export and evaluate share about models: base-model resolution (recipes, hub names,
folders, GGUF files), adapters, and the quantization config."""
