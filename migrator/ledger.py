"""The driver's state ledger: the newest row of every object of one manifest, on local disk.

A whole-server migration has millions of runs; the driver must not need more memory for them.
So the rows the driver decides from (state, target id, fingerprint, and the rest of the row
that a later stage's task takes as input) live in a SQLite file in a temporary folder, not in
Python dicts: memory is SQLite's page cache plus the rows of the page being read, whatever
the number of objects. The manifests in staging stay the record (`manifest.ManifestTable`
loads a ledger from them and writes them back from it); the ledger is only their index, built
again by every command and removed when it ends (one that a killed driver left behind, the
next driver on the machine removes: `workdirs`).

Reads go by pages of keys, so a table can be written while it is being read: rows already
passed are not seen again, whatever they became.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from migrator.workdirs import Workdir

Row = dict[str, Any]
Key = str | tuple[Any, ...]

_PAGE = 500
#: SQLite's page cache per ledger, in KiB. It fills up to this as a ledger grows, so it is
#: part of the driver's growth with the number of runs: a runs ledger grew the process by
#: 640 KB more at 100,000 runs than at 1,000 with 1 MiB (6.5 bytes per run of the 50 the
#: memory benchmark allows), 16 KB with 128 KiB, and took the same time (100,000 puts and
#: 14,000 lookups: 1.17 s either way). The file's pages stay in the OS's cache anyway.
_CACHE_KIB = 128
#: Groups named in one statement at most; more are filtered in Python.
_MAX_IN = 500


def _encode_key(key: Key) -> str:
    return key if isinstance(key, str) else json.dumps(list(key), separators=(",", ":"))


class Ledger:
    """One manifest's rows by key, with a group column (the experiment, or the model name) and
    the state, indexed, so a stage can read only its rows.

    A mapping to the driver's code (`get`, `in`, `values`, `items`, `len`), plus `put` and
    the filtered reads `rows` and `counts`.
    """

    def __init__(
        self,
        name: str,
        key: str | tuple[str, ...],
        group: str | None = None,
    ) -> None:
        self.name = name
        self.key = key
        self.group = group
        self._own = Workdir(f"ledger-{name}")
        """The folder of its own the ledger lives in (removed at `close`)."""
        self._folder = self._own.name
        self._db = sqlite3.connect(
            f"{self._folder}/{name}.sqlite3", isolation_level=None, check_same_thread=False
        )
        self._lock = threading.Lock()
        self._db.executescript(
            f"""
            PRAGMA journal_mode = OFF;
            PRAGMA synchronous = OFF;
            PRAGMA cache_size = -{_CACHE_KIB};
            PRAGMA temp_store = FILE;
            CREATE TABLE rows (
                k TEXT PRIMARY KEY, grp TEXT, state TEXT, failed_stage TEXT, row TEXT NOT NULL
            );
            CREATE INDEX rows_grp ON rows (grp);
            CREATE INDEX rows_state ON rows (state, failed_stage);
            """
        )

    # ---- writing ---------------------------------------------------------------------------

    def key_of(self, row: Mapping[str, Any]) -> Key:
        return row[self.key] if isinstance(self.key, str) else tuple(row[k] for k in self.key)

    def put(self, rows: Iterable[Row]) -> None:
        """Insert or replace rows (the newest wins); a replaced row moves to the end of the
        ledger's write order, which is the order `ordered` gives and the manifest keeps."""
        values = [
            (
                _encode_key(self.key_of(r)),
                None if self.group is None else r.get(self.group),
                r.get("state"),
                r.get("failed_stage"),
                json.dumps(r, separators=(",", ":"), default=_jsonable),
            )
            for r in rows
        ]
        if not values:
            return
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR REPLACE INTO rows VALUES (?, ?, ?, ?, ?)", values)
            self._db.execute("COMMIT")

    def __setitem__(self, key: Key, row: Row) -> None:
        if self.key_of(row) != key:
            raise KeyError(f"{self.name}: row of {self.key_of(row)!r} stored under {key!r}")
        self.put([row])

    # ---- reading ---------------------------------------------------------------------------

    def get(self, key: Key | None, default: Row | None = None) -> Row | None:
        if key is None:
            return default
        with self._lock:
            found = self._db.execute(
                "SELECT row FROM rows WHERE k = ?", (_encode_key(key),)
            ).fetchone()
        return json.loads(found[0]) if found else default

    def __getitem__(self, key: Key) -> Row:
        row = self.get(key)
        if row is None:
            raise KeyError(key)
        return row

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str | tuple):
            return False
        with self._lock:
            return (
                self._db.execute("SELECT 1 FROM rows WHERE k = ?", (_encode_key(key),)).fetchone()
                is not None
            )

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM rows").fetchone()[0])

    def rows(
        self,
        groups: Iterable[str] | None = None,
        states: Iterable[str | None] | None = None,
    ) -> Iterator[Row]:
        """Rows in key order, page by page, optionally of some groups and states only (a
        state None matches rows with no state)."""
        where: list[str] = []
        params: list[Any] = []
        wanted: set[str] | None = None
        if groups is not None:
            gs = list(groups)
            if not gs:
                return
            if len(gs) > _MAX_IN:  # too many for one statement: filtered here instead
                wanted = set(gs)
            else:
                where.append(f"grp IN ({','.join('?' * len(gs))})")
                params += gs
        if states is not None:
            ss = list(states)
            named = [s for s in ss if s is not None]
            parts = [f"state IN ({','.join('?' * len(named))})"] if named else []
            if None in ss:
                parts.append("state IS NULL")
            if not parts:
                return
            where.append("(" + " OR ".join(parts) + ")")
            params += named
        last = ""
        while True:
            clause = " AND ".join(["k > ?", *where])
            with self._lock:
                page = self._db.execute(
                    f"SELECT k, grp, row FROM rows WHERE {clause} ORDER BY k LIMIT {_PAGE}",
                    [last, *params],
                ).fetchall()
            for _, grp, row in page:
                if wanted is None or grp in wanted:
                    yield json.loads(row)
            if len(page) < _PAGE:
                return
            last = page[-1][0]

    def values(self) -> Iterator[Row]:
        return self.rows()

    def items(self) -> Iterator[tuple[Key, Row]]:
        return ((self.key_of(r), r) for r in self.rows())

    def keys(self) -> Iterator[Key]:
        return (k for k, _ in self.items())

    def __iter__(self) -> Iterator[Key]:
        return self.keys()

    def ordered(self) -> Iterator[Row]:
        """Every row in write order (oldest first), for writing the manifest: no writes may
        happen while this is read."""
        last = -1
        while True:
            with self._lock:
                page = self._db.execute(
                    f"SELECT rowid, row FROM rows WHERE rowid > ? ORDER BY rowid LIMIT {_PAGE}",
                    (last,),
                ).fetchall()
            for _, row in page:
                yield json.loads(row)
            if len(page) < _PAGE:
                return
            last = page[-1][0]

    def counts(self, groups: Iterable[str] | None = None) -> Counter[str]:
        """How many rows are in each state, optionally of some groups only."""
        wanted = None if groups is None else set(groups)
        out: Counter[str] = Counter()
        for grp, state, n in self._by_group_and_state():
            if wanted is None or grp in wanted:
                out[state or ""] += n
        return out

    def group_counts(self) -> Counter[str]:
        """How many rows each group has (a row of no group counts under "")."""
        out: Counter[str] = Counter()
        for grp, _, n in self._by_group_and_state():
            out[grp or ""] += n
        return out

    def _by_group_and_state(self) -> list[tuple[str | None, str | None, int]]:
        with self._lock:
            return self._db.execute(
                "SELECT grp, state, count(*) FROM rows GROUP BY grp, state"
            ).fetchall()

    def close(self) -> None:
        with self._lock:
            self._db.close()
        self._own.cleanup()


class Targets(Mapping[str, str]):
    """Source id → target id of the objects of a ledger that have one (a view: nothing is
    copied), for the stages that remap references (parent runs, logged models)."""

    def __init__(self, ledger: Ledger, column: str) -> None:
        self.ledger = ledger
        self.column = column

    def __getitem__(self, key: str) -> str:
        row = self.ledger.get(key)
        if not row or not row.get(self.column):
            raise KeyError(key)
        return str(row[self.column])

    def __iter__(self) -> Iterator[str]:
        return (str(k) for k, r in self.ledger.items() if r.get(self.column))

    def __len__(self) -> int:
        return sum(1 for _ in self)


class Column(Mapping[Key, Any]):
    """Key → one column's value (None when unset) of every row of a table (a ledger, or a
    dict of rows): a view, nothing copied."""

    def __init__(self, rows: Mapping[Any, Row] | Ledger, column: str) -> None:
        self.rows = rows
        self.column = column

    def __getitem__(self, key: Key) -> Any:
        return self.rows[key].get(self.column)

    def __iter__(self) -> Iterator[Key]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)


def _jsonable(value: Any) -> Any:
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"not a manifest value: {type(value).__name__}")
