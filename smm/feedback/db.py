"""Talk to the app's PostgreSQL: connect read-only, check the schema, turn driver errors into one
line, stream query results in batches (``BatchStream``), share a snapshot (``snapshot_twin``).

Every message names the database by its masked URL (``postgresql://user:***@host:5432/db``) and
passes through :func:`smm.secrets.redact`, because libpq's own texts can quote the connection
string.
"""
from __future__ import annotations

import contextlib
import queue
import re
import threading
from typing import Iterator

from smm.errors import SmmError
from smm.feedback.sql import FEEDBACK_COLUMNS, GENERATION_COLUMNS, table_identifier
from smm.secrets import mask_url, redact

CONNECT_TIMEOUT_S = 10
_LIBPQ_PREFIX = re.compile(r'^(connection to server (at|on) .*? failed: |could not connect to server: )', re.S)
_SEVERITY = re.compile(r"^(FATAL|ERROR):\s+")


def reason(exc: BaseException, url: str) -> str:
    """The first line of a driver error, without secrets, libpq's prefix or severity."""
    text = redact(str(exc).strip() or type(exc).__name__, url)
    text = _SEVERITY.sub("", _LIBPQ_PREFIX.sub("", text))
    first = next((line.strip() for line in text.splitlines() if line.strip()), text)
    return _SEVERITY.sub("", first)


@contextlib.contextmanager
def read_only_session(url: str) -> Iterator:
    """A connection in one read-only REPEATABLE READ transaction (one consistent snapshot).

    Any database error inside the block becomes an SmmError naming the masked URL.
    """
    import psycopg2
    from psycopg2.extensions import parse_dsn

    masked = mask_url(url)
    try:
        parse_dsn(url)
    except psycopg2.Error:
        raise SmmError(f"the database URL {masked} is not valid: expected "
                       "postgresql://user:password@host:5432/dbname (set DATABASE_URL)") from None
    try:
        conn = psycopg2.connect(url, connect_timeout=CONNECT_TIMEOUT_S, application_name="smm-feedback")
    except psycopg2.Error as exc:
        raise SmmError(f"cannot connect to {masked}: {reason(exc, url)} "
                       "(is the server running and DATABASE_URL right?)") from None
    try:
        conn.set_session(readonly=True, isolation_level="REPEATABLE READ")
        yield conn
    except psycopg2.Error as exc:
        raise SmmError(f"{masked}: {reason(exc, url)}") from None
    finally:
        with contextlib.suppress(psycopg2.Error):
            conn.close()


def check_schema(conn, url: str, tables, columns) -> None:
    """Raise one SmmError naming the first configured table or column the database lacks."""
    for key, column_keys in (("generations", GENERATION_COLUMNS), ("feedback", FEEDBACK_COLUMNS)):
        name = tables[key]
        quoted = table_identifier(name).as_string(conn)
        with conn.cursor() as cur:
            cur.execute("SELECT to_regclass(%s)::oid", (quoted,))
            oid = cur.fetchone()[0]
            if oid is None:
                raise SmmError(f'{mask_url(url)}: table "{name}" not found (set feedback.tables.{key}; '
                               "expected tables: smm/feedback/schema.sql)")
            cur.execute("SELECT attname FROM pg_attribute WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped "
                        "ORDER BY attnum", (oid,))
            present = [row[0] for row in cur.fetchall()]
        for column_key in column_keys:
            if columns[column_key] not in present:
                raise SmmError(f'{mask_url(url)}: table "{name}" has no column "{columns[column_key]}" '
                               f"(set feedback.columns.{column_key}; its columns: {', '.join(present)})")


class BatchStream:
    """The rows of ``query`` from a server-side cursor, in lists of ``batch_size``, read ahead.

    A background thread starts the query at once and keeps fetching while the caller works on
    earlier batches, so the server and this process work at the same time; at most three
    batches are held in memory. Errors of the thread are raised to the reader. Use it as a
    context manager (or call ``close``) so the thread ends even if the rows are not all read.
    """

    def __init__(self, conn, name: str, query, params: dict, batch_size: int) -> None:
        self._batches: queue.Queue = queue.Queue(maxsize=2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fetch, args=(conn, name, query, params, batch_size),
                                        name=f"{name}-fetch", daemon=True)
        self._thread.start()

    def _put(self, item) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(queue.Full):
                self._batches.put(item, timeout=0.1)
                return

    def _fetch(self, conn, name, query, params, batch_size) -> None:
        try:
            with conn.cursor(name=name) as cur:
                cur.itersize = batch_size
                cur.execute(query, params)
                while not self._stop.is_set():
                    rows = cur.fetchmany(batch_size)
                    self._put(rows)
                    if not rows:
                        return
        except BaseException as exc:  # handed to the reader, which raises it
            self._put(exc)

    def __iter__(self) -> Iterator[list[tuple]]:
        while True:
            item = self._batches.get()
            if isinstance(item, BaseException):
                raise item
            if not item:
                return
            yield item

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> "BatchStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextlib.contextmanager
def snapshot_twin(conn, url: str) -> Iterator:
    """A second read-only connection that sees exactly ``conn``'s snapshot, so two queries of one
    export run side by side on the server; ``conn`` itself on a hot standby (no snapshot export)."""
    with conn.cursor() as cur:
        cur.execute("SELECT pg_is_in_recovery()")
        if cur.fetchone()[0]:
            yield conn
            return
        cur.execute("SELECT pg_export_snapshot()")
        snapshot = cur.fetchone()[0]
    with read_only_session(url) as twin:
        with twin.cursor() as cur:
            cur.execute("SET TRANSACTION SNAPSHOT %s", (snapshot,))
        yield twin
