"""Collect ratings from the Social Scheduler's PostgreSQL into SFT and DPO training data.

``collect.collect_feedback`` runs one collection: ``db`` connects and streams rows with the SQL of
``sql``, ``mapping`` turns rows into examples (validated with the task registry, scrubbed of PII
by ``pii``), ``output`` appends them atomically to the JSONL files and ``state`` keeps the mark
that makes the next collection incremental. The tables it expects are in ``schema.sql``.
"""

THUMBS_UP = "THUMBS_UP"
THUMBS_DOWN = "THUMBS_DOWN"
EDITED = "EDITED"
RATINGS = (THUMBS_UP, THUMBS_DOWN, EDITED)
APPROVED = frozenset({THUMBS_UP, EDITED})
"""Ratings whose answer (the model's, or the user's edit) is a good example."""
