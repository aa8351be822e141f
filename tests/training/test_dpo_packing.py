"""training.dpo.packing on the tiny model (CPU): one padding-free row gives the padded batch's DPO
loss and LoRA gradients, and the model really sees one row of only the real tokens."""
from __future__ import annotations

import json

import torch
from conftest import compose_config

SYSTEM = {"role": "system", "content": "Answer with JSON only."}
PAIRS = [  # answers of very different lengths, so the padded batch is mostly padding
    {"prompt": [SYSTEM, {"role": "user", "content": "Hashtags for a bakery"}], "chosen": json.dumps({"hashtags": ["#bread"]}),
     "rejected": json.dumps({"hashtags": ["#buy", "#now", "#sale", "#bakery", "#fresh", "#bread", "#morning", "#local"] * 6})},
    {"prompt": [SYSTEM, {"role": "user", "content": "A post about our new bike shop opening on Saturday in the old town"}],
     "chosen": json.dumps({"post": "Doors open Saturday at 9: come by for coffee and a free bike check."}),
     "rejected": json.dumps({"post": "Bikes."})},
]


def _trainer(tiny_model_dir, tmp_path):
    from smm.training.dpo import dpo_config, to_dataset, trainer_class
    from smm.training.model import load_for_training

    cfg = compose_config("preset=tiny", f"training.checkpoint_dir={tmp_path / 'ckpt'}", "model.max_seq_length=256", "lora.dropout=0")
    loaded = load_for_training(str(tiny_model_dir), cfg, "hf")
    args = dpo_config(cfg, loaded.device, loaded.dtype, loaded.backend, has_val=False)
    args.per_device_train_batch_size = len(PAIRS)
    trainer = trainer_class()(model=loaded.model, args=args, processing_class=loaded.tokenizer,
                              train_dataset=to_dataset(loaded.tokenizer, PAIRS, 256, "training"))
    torch.manual_seed(0)
    for name, param in loaded.model.named_parameters():  # the policy moves away from its frozen reference copy
        if ".default." in name:
            param.data.normal_(0, 0.05)
    return trainer, loaded.model


def _loss_and_grads(trainer, model, batch):
    model.zero_grad(set_to_none=True)
    loss = trainer.compute_loss(model, dict(batch))
    loss.backward()
    return float(loss), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_packed_rows_give_the_padded_batchs_loss_and_gradients(tiny_model_dir, tmp_path):
    from smm.training.dpo_packing import packed_rows

    trainer, model = _trainer(tiny_model_dir, tmp_path)
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["input_ids"].shape[0] == 4 and (batch["attention_mask"] == 0).float().mean() > 0.3  # mostly padding

    padded_loss, padded_grads = _loss_and_grads(trainer, model, batch)
    seen = []
    backbone = model.get_base_model().model
    hook = backbone.register_forward_pre_hook(lambda m, a, kw: seen.append(tuple(kw["input_ids"].shape)), with_kwargs=True)
    try:
        with packed_rows(model):
            packed_loss, packed_grads = _loss_and_grads(trainer, model, batch)
    finally:
        hook.remove()

    real_tokens = int(batch["attention_mask"].sum())
    assert seen == [(1, real_tokens), (1, real_tokens)]  # policy and reference: one row of the real tokens only
    assert abs(packed_loss - padded_loss) < 1e-5 and padded_loss > 0.01, (packed_loss, padded_loss)
    assert packed_grads.keys() == padded_grads.keys() and padded_grads
    for name, grad in padded_grads.items():
        assert torch.allclose(packed_grads[name], grad, atol=1e-6, rtol=1e-4), name
    assert any(float(g.abs().max()) > 1e-4 for g in padded_grads.values())


def test_packing_off_leaves_the_padded_call(tiny_model_dir, tmp_path):
    from smm.training.dpo_packing import packed_rows

    trainer, model = _trainer(tiny_model_dir, tmp_path)
    batch = next(iter(trainer.get_train_dataloader()))
    seen = []
    hook = model.get_base_model().model.register_forward_pre_hook(lambda m, a, kw: seen.append(tuple(kw["input_ids"].shape)),
                                                                   with_kwargs=True)
    try:
        with packed_rows(model, enabled=False), torch.no_grad():
            trainer.compute_loss(model, dict(batch))
    finally:
        hook.remove()
    assert seen == [tuple(batch["input_ids"].shape)] * 2
