"""Model shapes the GPU benchmarks build with random weights (no download)."""
from smm.models.tiny import MODEL_SHAPE as SHAPE_TINY  # noqa: F401  (re-exported)

# Qwen2.5-7B-Instruct's architecture: 7.62 B parameters.
SHAPE_7B = dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768)
