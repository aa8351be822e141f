"""What prepare needs: example validation and normalization, near-duplicates, the split, statistics, preference pairs."""
