"""What export needs: the LoRA merge, GGUF conversion and quantization, Ollama registration, disk-space checks, timed steps."""
