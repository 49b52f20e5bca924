"""On-disk state of the local runtime, shared by every process of the project.

One SQLite database under the state directory holds every resource the local
clients know (jobs, models, endpoint configs, endpoints, model packages, ...) as
JSON documents keyed by (kind, name). SQLite's file locking makes a document
update atomic across processes, so the CLI, a second run and the job runners all
see and change the same state. Writes use ``BEGIN IMMEDIATE`` so a
read-modify-write never interleaves with another writer.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["StateStore"]

Doc = dict[str, Any]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS resources (
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    seq INTEGER NOT NULL,
    doc TEXT NOT NULL,
    PRIMARY KEY (kind, name)
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class StateStore:
    """JSON documents by (kind, name) in ``<root>/state.db``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.path = self.root / "state.db"
        self._local = threading.local()
        with self._connect() as conn:
            conn.executescript(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
        return conn

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self._connect()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def get(self, kind: str, name: str) -> Doc | None:
        row = self._connect().execute(
            "SELECT doc FROM resources WHERE kind=? AND name=?", (kind, name)
        ).fetchone()
        return json.loads(row[0]) if row else None

    def list(self, kind: str) -> list[Doc]:
        """Documents of ``kind`` in creation order."""
        rows = self._connect().execute(
            "SELECT doc FROM resources WHERE kind=? ORDER BY seq", (kind,)
        ).fetchall()
        return [json.loads(r[0]) for r in rows]

    def create(self, kind: str, name: str, doc: Doc) -> bool:
        """Insert ``doc``; False (and nothing written) if the name is taken."""
        with self.transaction() as conn:
            if conn.execute(
                "SELECT 1 FROM resources WHERE kind=? AND name=?", (kind, name)
            ).fetchone():
                return False
            seq = self._next(conn, "resources")
            conn.execute(
                "INSERT INTO resources (kind, name, seq, doc) VALUES (?, ?, ?, ?)",
                (kind, name, seq, json.dumps(doc)),
            )
        return True

    def put(self, kind: str, name: str, doc: Doc) -> None:
        with self.transaction() as conn:
            row = conn.execute(
                "SELECT seq FROM resources WHERE kind=? AND name=?", (kind, name)
            ).fetchone()
            seq = row[0] if row else self._next(conn, "resources")
            conn.execute(
                "INSERT OR REPLACE INTO resources (kind, name, seq, doc) VALUES (?, ?, ?, ?)",
                (kind, name, seq, json.dumps(doc)),
            )

    def update(self, kind: str, name: str, change: Callable[[Doc], Doc | None]) -> Doc | None:
        """Apply ``change`` to the stored document atomically; returns the new one.

        ``change`` may mutate its argument in place (returning None) or return a
        replacement. Returns None when no such document exists.
        """
        with self.transaction() as conn:
            row = conn.execute(
                "SELECT doc FROM resources WHERE kind=? AND name=?", (kind, name)
            ).fetchone()
            if row is None:
                return None
            doc = json.loads(row[0])
            new = change(doc)
            doc = doc if new is None else new
            conn.execute(
                "UPDATE resources SET doc=? WHERE kind=? AND name=?",
                (json.dumps(doc), kind, name),
            )
        return doc

    def delete(self, kind: str, name: str) -> bool:
        with self.transaction() as conn:
            cur = conn.execute("DELETE FROM resources WHERE kind=? AND name=?", (kind, name))
        return cur.rowcount > 0

    def next_value(self, counter: str) -> int:
        """A counter that only grows (model package versions, ...)."""
        with self.transaction() as conn:
            return self._next(conn, counter)

    @staticmethod
    def _next(conn: sqlite3.Connection, counter: str) -> int:
        conn.execute(
            "INSERT INTO counters (name, value) VALUES (?, 1) "
            "ON CONFLICT(name) DO UPDATE SET value = value + 1",
            (counter,),
        )
        row = conn.execute("SELECT value FROM counters WHERE name=?", (counter,)).fetchone()
        return int(row[0])
