"""A base model plus a LoRA adapter through transformers + PEFT (one request at a time).

The base is chosen as the export stage chooses it (:func:`smm.models.base.choose_base`: ``model.recipe``,
else ``model.base_model``, else (``null``) the one the adapter was trained on), from a
local folder or the local Hugging Face cache (nothing is downloaded), and checked against the
adapter's layers before anything loads. The tokenizer and
its chat template come from the adapter folder when the train stage saved them there. On CUDA the
base loads in ``model.quantization`` (4/8-bit with bitsandbytes) and bfloat16/float16; on CPU in
float32. It cannot constrain answers to a JSON schema (``can_constrain = False``).
"""
from __future__ import annotations

from pathlib import Path

from smm.backends import Generation, GenerationSettings, Messages, Schema, timed
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

    def __init__(self, adapter_dir: str, model_cfg, settings: GenerationSettings) -> None:
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
        self.settings = settings
        self.label = f"hf:{adapter.name}"

    def generate(self, messages: Messages, schema: Schema | None = None) -> Generation:
        import torch

        if schema is not None:
            raise SmmError("the hf backend cannot constrain answers to a JSON schema")
        inputs = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        ).to(self.model.device)
        sampling = {"do_sample": True, "temperature": self.settings.temperature} if self.settings.temperature > 0 else {"do_sample": False}

        def run() -> tuple[str, int, bool]:
            torch.manual_seed(self.settings.seed)
            with torch.inference_mode():
                out = self.model.generate(
                    **inputs, max_new_tokens=self.settings.max_tokens,
                    pad_token_id=self.tokenizer.pad_token_id, **sampling,
                )
            new = out[0, inputs["input_ids"].shape[1]:]
            eos = self.model.generation_config.eos_token_id
            stops = eos if isinstance(eos, list) else [eos]
            truncated = int(new.shape[0]) >= self.settings.max_tokens and int(new[-1]) not in stops
            return self.tokenizer.decode(new, skip_special_tokens=True), int(new.shape[0]), truncated

        return timed(run)

    def close(self) -> None:
        self.model = None
