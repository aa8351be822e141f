"""What evaluate needs: the built-in cases and their loader, task-aware checks, the optional judge, the reports and charts."""
