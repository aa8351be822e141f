"""What the trainer is built with: packing only where conversations are short enough for it to
pay, and the optimizer that training.optimizer=auto picks."""
from smm.training.sft import optimizer_name, row_fill, should_pack


def test_short_conversations_are_packed():
    assert should_pack(True, [150, 600, 1500, 300], 4096)


def test_rows_that_are_already_full_train_padded():
    assert row_fill([4096, 4096], 4096) == 1.0
    assert not should_pack(True, [4096, 4096, 3900], 4096)


def test_packing_off_stays_off():
    assert not should_pack(False, [150, 600], 4096)


def test_auto_optimizer_is_8bit_adamw_for_qlora_on_cuda_else_torch_adamw():
    assert optimizer_name("auto", "cuda", "4bit") == "adamw_8bit"
    assert optimizer_name("auto", "cuda", "8bit") == "adamw_8bit"
    assert optimizer_name("auto", "cuda", "none") == "adamw_torch"
    assert optimizer_name("auto", "cpu", "none") == "adamw_torch"
    assert optimizer_name("paged_adamw_8bit", "cuda", "4bit") == "paged_adamw_8bit"
