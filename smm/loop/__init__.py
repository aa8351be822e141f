"""What loop and rollback share: run records on disk (lineage) and the promote gate."""
