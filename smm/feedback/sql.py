"""The export's SQL, built from the configured table and column names (``feedback.tables/columns``).

Names enter only as quoted identifiers (``psycopg2.sql.Identifier``) and values only as
parameters, so nothing in the config or the data can change a statement. ``schema.table`` names
are split into schema and table.

An export covers the ratings up to this export's cutoff that earlier exports did not read
(``window``). Of all ratings of a generation up to the cutoff, the latest wins; older ones are
superseded.
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


def window(names: Names, alias: str, *, since: bool, incremental: bool, cutoff: bool = True) -> sql.Composed:
    """The condition that puts a rating of ``alias`` inside the export window (params by name).

    Ratings dated in the future never are (their time has not come). An incremental window
    starts ``feedback.overlap_minutes`` before the previous mark (``low``) and leaves out the
    ratings that earlier exports already read there (``seen``, ids as text): a rating whose
    transaction committed after that export began is picked up now.
    """
    parts = ["{a}.{created_at} <= now()"]
    if cutoff:
        parts.append("({a}.{created_at}, {a}.{feedback_id}) <= (%(cut_at)s, %(cut_id)s)")
    if incremental:
        parts.append("{a}.{created_at} >= %(low)s AND NOT {a}.{feedback_id}::text = ANY(%(seen)s::text[])")
    if since:
        parts.append("{a}.{created_at} >= %(since)s")
    return names.sql(" AND ".join(parts), a=sql.Identifier(alias))


def future_query(names: Names) -> sql.Composed:
    """How many ratings are dated after the database's now(), and the first of them."""
    return names.sql("SELECT count(*), min(f.{created_at})::text, min(f.{feedback_id}::text) FROM {feedback} AS f "
                     "WHERE f.{created_at} > now()")


def cutoff_query(names: Names, *, since: bool, incremental: bool, limit: bool) -> sql.Composed:
    """The key of the last rating this export covers: the ``limit``-th new one, or the newest."""
    where = window(names, "f", since=since, incremental=incremental, cutoff=False)
    order = "ORDER BY f.{created_at}, f.{feedback_id} OFFSET %(offset)s LIMIT 1" if limit else \
        "ORDER BY f.{created_at} DESC, f.{feedback_id} DESC LIMIT 1"
    return names.sql("SELECT f.{created_at}, f.{feedback_id} FROM {feedback} AS f WHERE {where} " + order, where=where)


def count_query(names: Names, *, since: bool, incremental: bool) -> sql.Composed:
    """``(new, new with their generation, all with their generation)``: ratings in the window and
    ratings up to the cutoff. The last count, kept in the state, tells the next export whether
    ratings or generations it covered were deleted since."""
    new = window(names, "f", since=since, incremental=True, cutoff=False) if incremental else sql.SQL("TRUE")
    return names.sql(
        "SELECT count(*) FILTER (WHERE {new}), count(*) FILTER (WHERE {new} AND g.{generation_id} IS NOT NULL), "
        "count(g.{generation_id}) FROM {feedback} AS f LEFT JOIN {generations} AS g "
        "ON g.{generation_id} = f.{feedback_generation_id} WHERE {upto}",
        new=new, upto=window(names, "f", since=since, incremental=False),
    )


def seen_query(names: Names) -> sql.Composed:
    """Ids (as text) of the ratings from ``%(new_low)s`` on that this export or earlier ones read."""
    return names.sql(
        "SELECT f.{feedback_id}::text FROM {feedback} AS f WHERE f.{created_at} >= %(new_low)s "
        "AND f.{created_at} <= now() AND ((f.{created_at}, f.{feedback_id}) <= (%(cut_at)s, %(cut_id)s) "
        "OR f.{feedback_id}::text = ANY(%(seen)s::text[]))"
    )


def _fresh_generations(names: Names, since: bool) -> sql.Composed:
    """Subquery: the generations with a rating new in this window."""
    fresh = window(names, "n", since=since, incremental=True)
    return names.sql("SELECT n.{feedback_generation_id} FROM {feedback} AS n WHERE {fresh}", fresh=fresh)


def fresh_query(names: Names, *, since: bool) -> sql.Composed:
    """The generations an incremental export writes anew (their earlier lines are dropped)."""
    return names.sql("SELECT DISTINCT x.id FROM ({fresh}) AS x(id)", fresh=_fresh_generations(names, since))


def _latest(names: Names, *, since: bool, narrow: bool, generations: sql.Composable | None = None) -> sql.Composed:
    """CTE ``latest``: each generation's latest rating in the window (up to the cutoff), for all
    generations or those of the subquery ``generations``."""
    scope = window(names, "f", since=since, incremental=False)
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


def ratings_query(names: Names, *, since: bool, incremental: bool) -> sql.Composed:
    """Each generation's latest rating in the window with its generation.

    Columns: feedback id, generation id, rating (upper case), edited output, comment, rated at (ISO
    text), whether the generation exists, task, language, platform, system prompt (NULL = the
    registry's), user input, model output, model name. The "exists" flag is false for a rating
    whose generation is missing (possible without a foreign key). Ordered by generation id, which
    lets PostgreSQL merge-join the two tables without a sort.
    """
    latest = _latest(names, since=since, narrow=False,
                     generations=_fresh_generations(names, since) if incremental else None)
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


def pairs_query(names: Names, *, since: bool, incremental: bool) -> sql.Composed:
    """``(thumbs-down feedback id, approved feedback id, thumbs-down generation id)``, by the first id.

    A thumbs-down answer pairs with the newest approved or edited answer to the same prompt
    (same task, language, platform, system prompt and user input, as stored). A full export pairs
    every thumbs-down that has one. An incremental export re-pairs every thumbs-down of each
    prompt that got a new rating, with an approved id of NULL where the prompt has
    no approved answer any more: the caller drops these thumbs-downs' earlier pairs, so the
    files hold what a full export would. Prompts are grouped by task and a 64-bit hash (a sort or
    hash aggregate, never a quadratic join); the caller compares the two prompts in full
    (``pair_rows_query``).
    """
    latest = _latest(names, since=since, narrow=True,
                     generations=_same_prompt_generations(names, since) if incremental else None)
    down, approved = sql.Literal(THUMBS_DOWN), sql.Literal(tuple(sorted(APPROVED)))
    having = "bool_or(is_down)" if incremental else "bool_or(is_down) AND bool_or(is_approved)"
    return names.sql(
        # no WHERE on the rating here: a filter the planner cannot estimate would turn the join
        # with generations into a million index lookups; other ratings fall out in the aggregates
        "WITH {latest}, "
        "keyed AS (SELECT l.fid, l.gid, l.created_at, l.rating = {down} AS is_down, l.rating IN {approved} AS is_approved, "
        "g.{task}::text AS task, " + _PROMPT_HASH.format(g="g") + " AS h "
        "FROM latest AS l JOIN {generations} AS g ON g.{generation_id} = l.gid), "
        "groups AS (SELECT "
        "array_agg(fid ORDER BY created_at DESC, fid DESC) FILTER (WHERE is_approved) AS approved, "
        # the same filter in one pass keeps the two arrays aligned
        "array_agg(fid) FILTER (WHERE is_down) AS downs, array_agg(gid) FILTER (WHERE is_down) AS down_gids "
        "FROM keyed GROUP BY task, h HAVING " + having + ") "
        "SELECT unnest(downs) AS d_fid, approved[1] AS a_fid, unnest(down_gids) AS d_gid FROM groups ORDER BY 1",
        latest=latest, down=down, approved=approved,
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
