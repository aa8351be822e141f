"""The built-in evaluation cases (cases.jsonl) and their loader."""
