"""A base model plus a LoRA adapter through transformers + PEFT, ``eval.batch_size`` conversations
generated together (left-padded, shortest prompts batched together).

The base is chosen as the export stage chooses it (:func:`smm.models.base.choose_base`: ``model.recipe``,
else ``model.base_model``, else (``null``) the one the adapter was trained on), from a
local folder or the local Hugging Face cache (nothing is downloaded), and checked against the
adapter's layers before anything loads. The tokenizer and
its chat template come from the adapter folder when the train stage saved them there. On CUDA the
base loads in ``model.quantization`` (4/8-bit with bitsandbytes) and bfloat16/float16; on CPU in
float32. It cannot constrain answers to a JSON schema (``can_constrain = False``).
"""
from __future__ import annotations

import time
from pathlib import Path

from smm.backends import Generation, GenerationSettings, Messages, Schema
from smm.errors import SmmError
from smm.models.adapter import Adapter, check_fits, read_adapter
from smm.models.base import choose_base, locate_base
from smm.models.quantization import compute_dtype, quantization_config


def base_model_for(adapter: Adapter, model_cfg) -> str:
    """The local folder of the base model to load under ``adapter``; SmmError if it is not here
    or does not fit the adapter."""
    name, _ = choose_base(model_cfg, adapter.base)
    folder = locate_base(name)
    check_fits(adapter, folder, name)
    return str(folder)


def _load_kwargs(model_cfg) -> dict:
    """On CUDA the training's dtype and quantization (smm.models.quantization); float32 on CPU."""
    import torch

    if not torch.cuda.is_available():
        return {"dtype": torch.float32}
    dtype = compute_dtype(model_cfg.dtype, "cuda")
    return {"dtype": dtype, "device_map": {"": 0}, "quantization_config": quantization_config(model_cfg.quantization, dtype)}


class HFBackend:
    max_workers = 1
    can_constrain = False

    def __init__(self, adapter_dir: str, model_cfg, settings: GenerationSettings, batch_size: int = 1) -> None:
        adapter = Path(adapter_dir)
        if not (adapter / "adapter_config.json").is_file():
            raise SmmError(
                f"eval.adapter_dir: {adapter_dir} has no adapter_config.json; train first "
                "(python run.py stage=train) or point eval.adapter_dir at a LoRA adapter folder"
            )
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        base = base_model_for(read_adapter(adapter), model_cfg)
        tokenizer_dir = adapter if (adapter / "tokenizer_config.json").is_file() else base
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(base, local_files_only=True, **_load_kwargs(model_cfg))
        except OSError as exc:
            raise SmmError(f"cannot load the base model from {base} ({' '.join(str(exc).split())[:200]})") from None
        self.model = PeftModel.from_pretrained(model, adapter).eval()
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.settings = settings
        self.batch_size = batch_size
        self.label = f"hf:{adapter.name}"

    def generate(self, messages: Messages, schema: Schema | None = None) -> Generation:
        return self.generate_batch([messages], [schema])[0]

    def generate_batch(self, conversations: list[Messages], schemas: list[Schema | None]) -> list[Generation]:
        """Answers to ``conversations``, generated together; each carries the whole batch's latency."""
        import torch

        if any(s is not None for s in schemas):
            raise SmmError("the hf backend cannot constrain answers to a JSON schema")
        inputs = self.tokenizer.apply_chat_template(
            conversations, add_generation_prompt=True, return_tensors="pt", return_dict=True, padding=True
        ).to(self.model.device)
        sampling = {"do_sample": True, "temperature": self.settings.temperature} if self.settings.temperature > 0 else {"do_sample": False}
        if self.settings.repeat_penalty is not None:
            sampling["repetition_penalty"] = self.settings.repeat_penalty
        started = time.perf_counter()
        torch.manual_seed(self.settings.seed)
        with torch.inference_mode():
            out = self.model.generate(
                **inputs, max_new_tokens=self.settings.max_tokens, pad_token_id=self.tokenizer.pad_token_id, **sampling,
            )
        latency = time.perf_counter() - started
        eos = self.model.generation_config.eos_token_id
        stops = set(eos if isinstance(eos, list) else [eos])
        return [self._answer(row.tolist(), stops, latency) for row in out[:, inputs["input_ids"].shape[1]:]]

    def _answer(self, new: list[int], stops: set[int], latency: float) -> Generation:
        """One row of a batch: its tokens up to and including the first end-of-turn token."""
        end = next((i + 1 for i, token in enumerate(new) if token in stops), None)
        tokens = new[:end] if end else new
        truncated = end is None and len(new) >= self.settings.max_tokens
        return Generation(self.tokenizer.decode(tokens, skip_special_tokens=True), latency, len(tokens), truncated=truncated)

    def close(self) -> None:
        self.model = None
