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

# Rows carry the system prompt only when it differs from the task's in the registry (parameter
# ``registry_prompts``); NULL stands for the registry's, which saves sending the same few hundred
# bytes with nearly every row.
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


def _fresh_generations(names: Names, since: bool) -> sql.Composed:
    """Subquery: the generations with a rating new in this window."""
    fresh = window(names, "n", since=since, after_mark=True)
    return names.sql("SELECT n.{feedback_generation_id} FROM {feedback} AS n WHERE {fresh}", fresh=fresh)


def _latest(names: Names, *, since: bool, narrow: bool, generations: sql.Composable | None = None) -> sql.Composed:
    """CTE ``latest``: each generation's latest rating in the window (up to the cutoff), for all
    generations or those of the subquery ``generations``."""
    scope = window(names, "f", since=since, after_mark=False)
    if generations is not None:
        scope = names.sql("{scope} AND f.{feedback_generation_id} IN ({subquery})", scope=scope,
                          subquery=generations)
    extra = "" if narrow else ", f.{edited_output} AS edited, f.{comment} AS comment"
    return names.sql(
        "latest AS (SELECT DISTINCT ON (f.{feedback_generation_id}) f.{feedback_id} AS fid, "
        "f.{feedback_generation_id} AS gid, upper(f.{rating}::text) AS rating, f.{created_at} AS created_at"
        + extra + " FROM {feedback} AS f WHERE {scope} "
        "ORDER BY f.{feedback_generation_id}, f.{created_at} DESC, f.{feedback_id} DESC)",
        scope=scope,
    )


def ratings_query(names: Names, *, since: bool, after_mark: bool) -> sql.Composed:
    """Each generation's latest rating in the window with its generation.

    Columns: feedback id, generation id, rating (upper case), edited output, comment, rated at (ISO
    text), whether the generation exists, task, language, platform, system prompt (NULL = the
    registry's), user input, model output, model name. The "exists" flag is false for a rating
    whose generation is missing (possible without a foreign key). Ordered by generation id, which
    lets PostgreSQL merge-join the two tables without a sort.
    """
    latest = _latest(names, since=since, narrow=False,
                     generations=_fresh_generations(names, since) if after_mark else None)
    return names.sql(
        "WITH {latest} SELECT n.fid, n.gid, n.rating, n.edited, n.comment, " + _ISO.format(col="n.created_at") + ", "
        "g.{generation_id} IS NOT NULL, g.{task}::text, g.{language}::text, g.{platform}::text, "
        + _SYSTEM_PROMPT.format(g="g") + ", g.{user_input}, g.{model_output}, g.{model_name}::text "
        "FROM latest AS n LEFT JOIN {generations} AS g ON g.{generation_id} = n.gid ORDER BY n.gid",
        latest=latest,
    )


_PROMPT_HASH = (
    "hashtextextended(concat_ws(chr(31), coalesce({g}.{{language}}::text, ''), coalesce({g}.{{platform}}::text, ''), "
    "coalesce({g}.{{system_prompt}}, ''), {g}.{{user_input}}), 0)"
)


def _same_prompt_generations(names: Names, since: bool) -> sql.Composed:
    """Subquery: generations whose prompt (task and hash) is one of a generation rated anew.

    Incremental exports pair only around new ratings, so the aggregate below sees these few
    generations instead of all of them (one pass over generations to hash their prompts remains).
    """
    return names.sql(
        "SELECT r.{generation_id} FROM {generations} AS r WHERE (r.{task}::text, " + _PROMPT_HASH.format(g="r") + ") IN "
        "(SELECT g.{task}::text, " + _PROMPT_HASH.format(g="g") + " FROM {generations} AS g "
        "WHERE g.{generation_id} IN ({fresh}))",
        fresh=_fresh_generations(names, since),
    )


def pairs_query(names: Names, *, since: bool, after_mark: bool) -> sql.Composed:
    """``(thumbs-down feedback id, approved feedback id)`` for each new pair, by the first id.

    A thumbs-down answer pairs with the newest approved or edited answer to the same prompt
    (same task, language, platform, system prompt and user input, as stored); only pairs with at
    least one rating new in this window: a thumbs-down rated now pairs with the newest approved
    answer of any time, an older thumbs-down with the newest one rated now. Prompts are grouped
    by task and a 64-bit hash (a sort or hash aggregate, never a quadratic join); the caller
    compares the two prompts in full (``pair_rows_query``).
    """
    latest = _latest(names, since=since, narrow=True,
                     generations=_same_prompt_generations(names, since) if after_mark else None)
    is_new = sql.SQL("(l.created_at, l.fid) > (%(mark_at)s, %(mark_id)s)" if after_mark else "TRUE")
    down, approved = sql.Literal(THUMBS_DOWN), sql.Literal(tuple(sorted(APPROVED)))
    return names.sql(
        # no WHERE on the rating here: a filter the planner cannot estimate would turn the join
        # with generations into a million index lookups; other ratings fall out in the aggregates
        "WITH {latest}, "
        "keyed AS (SELECT l.fid, l.created_at, l.rating = {down} AS is_down, l.rating IN {approved} AS is_approved, "
        "{is_new} AS is_new, g.{task}::text AS task, " + _PROMPT_HASH.format(g="g") + " AS h "
        "FROM latest AS l JOIN {generations} AS g ON g.{generation_id} = l.gid), "
        "groups AS (SELECT "
        "array_agg(fid ORDER BY created_at DESC, fid DESC) FILTER (WHERE is_approved) AS approved, "
        "array_agg(fid ORDER BY created_at DESC, fid DESC) FILTER (WHERE is_approved AND is_new) AS new_approved, "
        "array_agg(fid) FILTER (WHERE is_down AND is_new) AS new_downs, "
        "array_agg(fid) FILTER (WHERE is_down AND NOT is_new) AS old_downs "
        "FROM keyed GROUP BY task, h HAVING bool_or(is_down) AND bool_or(is_approved) AND bool_or(is_new)) "
        "SELECT unnest(new_downs) AS d_fid, approved[1] AS a_fid FROM groups "
        "UNION ALL SELECT unnest(old_downs), new_approved[1] FROM groups WHERE new_approved IS NOT NULL "
        "ORDER BY 1",
        latest=latest, is_new=is_new, down=down, approved=approved,
    )


def pair_rows_query(names: Names) -> sql.Composed:
    """The ratings ``%(ids)s`` (a tuple of feedback ids) with their generations.

    Columns: as ``ratings_query`` without the "generation exists" flag.
    """
    return names.sql(
        "SELECT f.{feedback_id}, f.{feedback_generation_id}, upper(f.{rating}::text), f.{edited_output}, f.{comment}, "
        + _ISO.format(col="f.{created_at}") + ", g.{task}::text, g.{language}::text, g.{platform}::text, "
        + _SYSTEM_PROMPT.format(g="g") + ", g.{user_input}, g.{model_output}, g.{model_name}::text "
        "FROM {feedback} AS f JOIN {generations} AS g ON g.{generation_id} = f.{feedback_generation_id} "
        "WHERE f.{feedback_id} IN %(ids)s"
    )
