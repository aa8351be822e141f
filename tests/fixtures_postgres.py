"""A real PostgreSQL server for the feedback tests, started once per test session.

The server comes from the PostgreSQL binaries on PATH (``initdb``, ``pg_ctl``). initdb refuses to
run as root, so as root (CI) the server runs as the ``postgres`` system user via ``runuser``, in
a temp directory owned by it. It listens on 127.0.0.1 on a free port and lets a test role in
with a password (SCRAM), as an app database would; the superuser only connects through the
server's own Unix socket. Every test gets a fresh database (``feedback_db``) so tests stay
independent. ``bench/feedback_collect.py`` uses :class:`LocalPostgres` too.
"""
from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Iterator

import pytest

TEST_ROLE = "smm_feedback"
SCHEMA_SQL = Path(__file__).resolve().parent.parent / "smm" / "feedback" / "schema.sql"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalPostgres:
    """A throwaway PostgreSQL cluster: ``start()``, ``create_database()``, ``stop()``."""

    def __init__(self, settings: dict[str, str] | None = None) -> None:
        self.password = secrets.token_urlsafe(18)
        self.port = _free_port()
        self.root = Path(tempfile.mkdtemp(prefix="smm-pg-"))
        self.data = self.root / "data"
        self.settings = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off", **(settings or {})}
        self._run_as = None
        if os.geteuid() == 0:
            self._run_as = "postgres"
            owner = pwd.getpwnam(self._run_as)
            os.chown(self.root, owner.pw_uid, owner.pw_gid)

    def _cmd(self, *args: str) -> list[str]:
        return ["runuser", "-u", self._run_as, "--", *args] if self._run_as else list(args)

    def start(self) -> "LocalPostgres":
        for tool in ("initdb", "pg_ctl"):
            if not shutil.which(tool):
                raise RuntimeError(f"{tool} is not on PATH: install the PostgreSQL server binaries")
        subprocess.run(
            self._cmd("initdb", "-D", str(self.data), "-U", "postgres", "-E", "UTF8", "--locale=C",
                      "--auth-local=trust", "--auth-host=scram-sha-256"),
            check=True, capture_output=True, text=True,
        )
        options = " ".join(
            [f"-p {self.port}", f"-k {self.root}", "-c listen_addresses=127.0.0.1"]
            + [f"-c {key}={value}" for key, value in self.settings.items()]
        )
        subprocess.run(
            self._cmd("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-o", options, "-w", "start"),
            check=True, capture_output=True, text=True,
        )
        with self.admin() as cur:
            cur.execute(f"CREATE ROLE {TEST_ROLE} LOGIN PASSWORD %s", (self.password,))
        return self

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError, FileNotFoundError):
            subprocess.run(self._cmd("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop"),
                           check=True, capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)

    @contextlib.contextmanager
    def admin(self, dbname: str = "postgres") -> Iterator:
        """A cursor of the superuser (through the Unix socket), autocommit."""
        import psycopg2

        conn = psycopg2.connect(host=str(self.root), port=self.port, user="postgres", dbname=dbname)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                yield cur
        finally:
            conn.close()

    def url(self, dbname: str, password: str | None = None) -> str:
        """The test role's URL for ``dbname`` over TCP with a password, as an app would use."""
        return f"postgresql://{TEST_ROLE}:{password or self.password}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, schema_sql: str | None = None) -> "Database":
        """A fresh database owned by the test role, with ``schema_sql`` (default: smm's schema) applied."""
        name = f"fb_{uuid.uuid4().hex[:12]}"
        with self.admin() as cur:
            cur.execute(f"CREATE DATABASE {name} OWNER {TEST_ROLE}")
        db = Database(self, name)
        sql = SCHEMA_SQL.read_text() if schema_sql is None else schema_sql
        if sql.strip():
            db.execute(sql)
        return db

    def drop_database(self, name: str) -> None:
        with self.admin() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


class Database:
    """One test database: its URL and helpers to run SQL and insert rows as the test role."""

    def __init__(self, server: LocalPostgres, name: str) -> None:
        self.server, self.name = server, name
        self.url = server.url(name)
        self._conn = None

    @contextlib.contextmanager
    def cursor(self) -> Iterator:
        """A cursor on the test role's connection (autocommit: every statement commits)."""
        import psycopg2

        if self._conn is None:
            self._conn = psycopg2.connect(self.url)
            self._conn.autocommit = True
        with self._conn.cursor() as cur:
            yield cur

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def execute(self, sql: str, params=None) -> None:
        with self.cursor() as cur:
            cur.execute(sql, params)

    def generation(self, task="post_generation", language="en", platform="instagram", user_input="Write a post",
                   model_output="{}", system_prompt=None, model_name="social-media-marketer", table="generations",
                   columns=None) -> int:
        """Insert a generation row; returns its id. ``columns`` renames the default columns."""
        values = {"task": task, "language": language, "platform": platform, "system_prompt": system_prompt,
                  "user_input": user_input, "model_output": model_output, "model_name": model_name}
        return self._insert(table, values, columns or {}, "id")

    def rate(self, generation_id, rating, edited_output=None, comment=None, created_at=None, table="feedback",
             columns=None) -> int:
        """Insert a rating; ``created_at`` an ISO timestamp (default: now(), so insert order is time order)."""
        values = {"generation_id": generation_id, "rating": rating, "edited_output": edited_output, "comment": comment}
        if created_at is not None:
            values["created_at"] = created_at
        return self._insert(table, values, columns or {}, "id")

    def _insert(self, table: str, values: dict, columns: dict, key: str) -> int:
        from psycopg2 import sql

        names = [columns.get(k, k) for k in values]
        query = sql.SQL("INSERT INTO {} ({}) VALUES ({}) RETURNING {}").format(
            sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, names)),
            sql.SQL(", ").join(sql.Placeholder() * len(names)), sql.Identifier(columns.get(key, key)),
        )
        with self.cursor() as cur:
            cur.execute(query, list(values.values()))
            return cur.fetchone()[0]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[LocalPostgres]:
    """One PostgreSQL server for the whole test session."""
    server = LocalPostgres().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def feedback_db(postgres_server: LocalPostgres) -> Iterator[Database]:
    """A fresh database with smm's feedback schema, dropped after the test."""
    db = postgres_server.create_database()
    try:
        yield db
    finally:
        db.close()
        postgres_server.drop_database(db.name)
