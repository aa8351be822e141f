"""A hash of LoRA weights that is the same for a live PEFT model and its saved adapter file."""
from __future__ import annotations

import hashlib


def lora_hash(tensors: dict) -> str:
    """sha256 over the tensors sorted by name, PEFT's adapter name (``.default``) left out of names."""
    digest = hashlib.sha256()
    for name in sorted(tensors, key=lambda n: n.replace(".default", "")):
        digest.update(name.replace(".default", "").encode())
        digest.update(tensors[name].detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
