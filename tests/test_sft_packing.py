"""When the train stage packs: only where conversations are short enough for packing to pay."""
from smm.sft import row_fill, should_pack


def test_short_conversations_are_packed():
    assert should_pack(True, [150, 600, 1500, 300], 4096)


def test_rows_that_are_already_full_train_padded():
    assert row_fill([4096, 4096], 4096) == 1.0
    assert not should_pack(True, [4096, 4096, 3900], 4096)


def test_packing_off_stays_off():
    assert not should_pack(False, [150, 600], 4096)
