"""What train needs: model loading for training, tokenization, the SFT and DPO trainers, checkpoints, data-parallel launch."""
