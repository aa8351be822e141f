"""smm: fine-tune a local social-media copywriting model and ship it to Ollama."""

__version__ = "0.1.0"
