"""One rank of the train stage as ``torchrun run.py stage=train ...`` runs it, with a record for
tests/training/test_train_ddp.py: OUT/rank<R>.json holds the input ids of every micro-batch this rank trained
on, a hash of its LoRA weights after training, whether it saved the adapter, and what it returned.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/ddp_probe.py OUT OVERRIDE...
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # this checkout's smm, also where another one is installed

from lora_hash import lora_hash  # noqa: E402  (tests/ is the script's folder)


def main(out: Path, overrides: list[str]) -> None:
    from hydra import compose, initialize_config_dir

    import smm.training.sft
    from smm.config import register_configs, validate
    from smm.stages import train

    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    validate(cfg)
    record = {"rank": int(os.environ["RANK"]), "batches": [], "saved": False}
    build_trainer, save = smm.training.sft.build_trainer, train._save

    def probed_build_trainer(*args, **kwargs):
        trainer, throughput = build_trainer(*args, **kwargs)
        training_step, fit = trainer.training_step, trainer.train

        def recorded_step(model, inputs, *rest, **more):
            record["batches"].append(inputs["input_ids"].tolist())
            return training_step(model, inputs, *rest, **more)

        def recorded_fit(*rest, **more):
            result = fit(*rest, **more)
            record["lora"] = lora_hash({n: p for n, p in trainer.model.named_parameters() if "lora_" in n})
            return result

        trainer.training_step, trainer.train = recorded_step, recorded_fit
        return trainer, throughput

    def recorded_save(*args, **kwargs):
        record["saved"] = True
        return save(*args, **kwargs)

    smm.training.sft.build_trainer, train._save = probed_build_trainer, recorded_save
    record["returned"] = train.run(cfg)
    (out / f"rank{record['rank']}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
