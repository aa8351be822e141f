"""The export's SQL, built from the configured table and column names (``feedback.tables/columns``).

Names enter only as quoted identifiers (``psycopg2.sql.Identifier``) and values only as
parameters, so nothing in the config or the data can change a statement. ``schema.table`` names
are split into schema and table.

An export covers the ratings whose ``(created_at, id)`` lies after the previous export's mark
and at or before this export's cutoff (``window``). Of all ratings of a generation up to the
cutoff, the latest wins; older ones are superseded.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from psycopg2 import sql

from smm.feedback import APPROVED, THUMBS_DOWN
from smm.tasks import TASKS

GENERATION_COLUMNS = ("generation_id", "task", "language", "platform", "system_prompt", "user_input",
                      "model_output", "model_name")
FEEDBACK_COLUMNS = ("feedback_id", "feedback_generation_id", "rating", "edited_output", "comment", "created_at")

# Columns of a streamed rating row (see ``ratings_query``), in order.
RATING_FIELDS = ("fid", "gid", "rating", "edited", "comment", "created_at", "found", "task", "language",
                 "platform", "system_prompt", "user_input", "model_output", "model_name")
# Columns of a thumbs-down pair row (see ``pairs_query``), in order.
PAIR_FIELDS = ("d_fid", "d_gid", "d_comment", "rejected", "a_fid", "a_gid", "a_rating", "a_edited",
               "rated_at", "task", "language", "platform", "system_prompt", "user_input", "model_output",
               "model_name")
# Parameters every export query takes besides the window: the registry's system prompts by task.
# A system prompt equal to its task's comes back as NULL (= the registry's), which saves sending
# the same few hundred bytes with nearly every row.
_SYSTEM_PROMPT = ("CASE WHEN {g}.{{system_prompt}} = (%(registry_prompts)s::jsonb ->> {g}.{{task}}::text) "
                  "THEN NULL ELSE {g}.{{system_prompt}} END")
# Timestamps as ISO 8601 text (the session runs in UTC), cheaper than datetimes on both ends.
_ISO = "replace({col}::text, ' ', 'T')"


def registry_prompts() -> str:
    """The ``registry_prompts`` parameter: the task registry's system prompts as a JSON object."""
    return json.dumps({name: task.system_prompt for name, task in TASKS.items()})


def table_identifier(name: str) -> sql.Identifier:
    """``feedback`` → "feedback"; ``app.feedback`` → "app"."feedback"."""
    return sql.Identifier(*name.split(".", 1))


@dataclass(frozen=True)
class Names:
    """Quoted identifiers of the configured tables and columns."""

    generations: sql.Identifier
    feedback: sql.Identifier
    columns: dict[str, sql.Identifier]

    @classmethod
    def from_config(cls, tables, columns) -> "Names":
        return cls(
            generations=table_identifier(tables.generations),
            feedback=table_identifier(tables.feedback),
            columns={key: sql.Identifier(columns[key]) for key in GENERATION_COLUMNS + FEEDBACK_COLUMNS},
        )

    def sql(self, template: str, **extra: sql.Composable) -> sql.Composed:
        """``template`` with ``{feedback}``, ``{generations}``, every column key and ``extra`` filled in."""
        return sql.SQL(template).format(feedback=self.feedback, generations=self.generations, **self.columns, **extra)


def window(names: Names, alias: str, *, since: bool, after_mark: bool, cutoff: bool = True) -> sql.Composed:
    """The condition that puts a rating of ``alias`` inside the export window (params by name)."""
    parts = []
    if cutoff:
        parts.append("({a}.{created_at}, {a}.{feedback_id}) <= (%(cut_at)s, %(cut_id)s)")
    if after_mark:
        parts.append("({a}.{created_at}, {a}.{feedback_id}) > (%(mark_at)s, %(mark_id)s)")
    if since:
        parts.append("{a}.{created_at} >= %(since)s")
    return names.sql(" AND ".join(parts) or "TRUE", a=sql.Identifier(alias))


def cutoff_query(names: Names, *, since: bool, after_mark: bool, limit: bool) -> sql.Composed:
    """The key of the last rating this export covers: the ``limit``-th new one, or the newest."""
    where = window(names, "f", since=since, after_mark=after_mark, cutoff=False)
    order = "ORDER BY f.{created_at}, f.{feedback_id} OFFSET %(offset)s LIMIT 1" if limit else \
        "ORDER BY f.{created_at} DESC, f.{feedback_id} DESC LIMIT 1"
    return names.sql("SELECT f.{created_at}, f.{feedback_id} FROM {feedback} AS f WHERE {where} " + order, where=where)


def count_query(names: Names, *, since: bool, after_mark: bool) -> sql.Composed:
    """How many ratings (superseded ones included) the window holds."""
    where = window(names, "f", since=since, after_mark=after_mark)
    return names.sql("SELECT count(*) FROM {feedback} AS f WHERE {where}", where=where)


def rerated_query(names: Names, *, since: bool) -> sql.Composed:
    """Generations rated in this window that were already rated before the mark (earlier exports)."""
    new = window(names, "f", since=since, after_mark=True)
    return names.sql(
        "SELECT DISTINCT f.{feedback_generation_id} FROM {feedback} AS f WHERE {new} AND EXISTS ("
        "SELECT 1 FROM {feedback} AS o WHERE o.{feedback_generation_id} = f.{feedback_generation_id} "
        "AND (o.{created_at}, o.{feedback_id}) <= (%(mark_at)s, %(mark_id)s))",
        new=new,
    )


def _latest(names: Names, *, since: bool, after_mark: bool, narrow: bool) -> sql.Composed:
    """CTE ``latest``: each generation's latest rating in the window (up to the cutoff)."""
    scope = window(names, "f", since=since, after_mark=False)
    if after_mark:  # incremental: only generations that got a new rating
        fresh = window(names, "n", since=since, after_mark=True)
        scope = names.sql(
            "{scope} AND f.{feedback_generation_id} IN (SELECT n.{feedback_generation_id} FROM {feedback} AS n "
            "WHERE {fresh})", scope=scope, fresh=fresh)
    extra = "" if narrow else ", f.{edited_output} AS edited, f.{comment} AS comment"
    return names.sql(
        "latest AS (SELECT DISTINCT ON (f.{feedback_generation_id}) f.{feedback_id} AS fid, "
        "f.{feedback_generation_id} AS gid, upper(f.{rating}::text) AS rating, f.{created_at} AS created_at"
        + extra + " FROM {feedback} AS f WHERE {scope} "
        "ORDER BY f.{feedback_generation_id}, f.{created_at} DESC, f.{feedback_id} DESC)",
        scope=scope,
    )


def ratings_query(names: Names, *, since: bool, after_mark: bool) -> sql.Composed:
    """Each generation's latest rating in the window with its generation (``RATING_FIELDS``).

    Ordered by generation id, which lets PostgreSQL merge-join the two tables without a sort.
    ``found`` is false for a rating whose generation does not exist (no foreign key).
    """
    latest = _latest(names, since=since, after_mark=after_mark, narrow=False)
    return names.sql(
        "WITH {latest} SELECT n.fid, n.gid, n.rating, n.edited, n.comment, " + _ISO.format(col="n.created_at") + ", "
        "g.{generation_id} IS NOT NULL, g.{task}::text, g.{language}::text, g.{platform}::text, "
        + _SYSTEM_PROMPT.format(g="g") + ", g.{user_input}, g.{model_output}, g.{model_name}::text "
        "FROM latest AS n LEFT JOIN {generations} AS g ON g.{generation_id} = n.gid ORDER BY n.gid",
        latest=latest,
    )


_SAME_PROMPT = (
    "dg.{task}::text = ag.{task}::text AND dg.{user_input} = ag.{user_input} "
    "AND coalesce(dg.{system_prompt}, '') = coalesce(ag.{system_prompt}, '') "
    "AND coalesce(dg.{language}::text, '') = coalesce(ag.{language}::text, '') "
    "AND coalesce(dg.{platform}::text, '') = coalesce(ag.{platform}::text, '')"
)


def pairs_query(names: Names, *, since: bool, after_mark: bool) -> sql.Composed:
    """Thumbs-down answers paired with the newest approved or edited answer to the same prompt.

    Same prompt = same task, user input, system prompt, language and platform. Only pairs with
    at least one rating new in this window (``PAIR_FIELDS``): a thumbs-down rated now pairs with
    the newest approved answer of any time, an older thumbs-down with the newest one rated now.
    The prompt is matched on a 64-bit hash first, then compared in full.
    """
    latest = _latest(names, since=since, after_mark=False, narrow=True)
    is_new = sql.SQL("(l.created_at, l.fid) > (%(mark_at)s, %(mark_id)s)" if after_mark else "TRUE")
    down, approved = sql.Literal(THUMBS_DOWN), sql.Literal(tuple(sorted(APPROVED)))
    return names.sql(
        "WITH {latest}, keyed AS (SELECT l.fid, l.gid, l.rating, l.created_at, {is_new} AS is_new, "
        "g.{task}::text AS task, hashtextextended(g.{user_input}, 0) AS h "
        "FROM latest AS l "
        "JOIN {generations} AS g ON g.{generation_id} = l.gid "
        "WHERE l.rating = {down} OR l.rating IN {approved}), "
        "pairs AS (SELECT DISTINCT ON (d.fid) d.fid AS d_fid, d.gid AS d_gid, a.fid AS a_fid, a.gid AS a_gid "
        "FROM keyed AS d JOIN keyed AS a ON a.task = d.task AND a.h = d.h "
        "JOIN {generations} AS dg ON dg.{generation_id} = d.gid JOIN {generations} AS ag ON ag.{generation_id} = a.gid "
        "WHERE d.rating = {down} AND a.rating IN {approved} AND (d.is_new OR a.is_new) AND " + _SAME_PROMPT + " "
        "ORDER BY d.fid, a.created_at DESC, a.fid DESC) "
        "SELECT p.d_fid, p.d_gid, df.{comment}, dg.{model_output}, "
        "p.a_fid, p.a_gid, upper(af.{rating}::text), af.{edited_output}, "
        + _ISO.format(col="greatest(df.{created_at}, af.{created_at})") + ", "
        "ag.{task}::text, ag.{language}::text, ag.{platform}::text, " + _SYSTEM_PROMPT.format(g="ag") + ", ag.{user_input}, "
        "ag.{model_output}, ag.{model_name}::text "
        "FROM pairs AS p JOIN {feedback} AS df ON df.{feedback_id} = p.d_fid "
        "JOIN {feedback} AS af ON af.{feedback_id} = p.a_fid "
        "JOIN {generations} AS dg ON dg.{generation_id} = p.d_gid "
        "JOIN {generations} AS ag ON ag.{generation_id} = p.a_gid ORDER BY p.d_fid",
        latest=latest, is_new=is_new, down=down, approved=approved,
    )
