"""Generated input (hypothesis): configurations with awkward identifiers, and `where` predicates.

Every generated case either installs and deletes exactly the rows the rule names (worked out here,
in Python, from the rows as inserted), or exits 2 with one `dbjobs: error:` line per problem and
changes nothing. Examples are bounded (see SETTINGS) to keep the suite fast; each test prints how
many cases it tried and how many of them installed (pytest -s shows it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from psycopg import sql

from tests.conftest import AppDb

SETTINGS = settings(
    max_examples=50,
    deadline=None,
    database=None,  # no .hypothesis/ folder in the working tree
    derandomize=True,  # the same cases on every run and in CI
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# ---------------------------------------------------------------- identifiers

RESERVED = ["select", "user", "order", "table", "from", "where", "group", "limit", "end", "Public"]
PIECES = ["a", "Z", "é", "ß", "日本", "😀", " ", '"', "'", ".", ";", "-", "--", "$", "\\", "%", "_", "7"]
PIECES += ["\t"]


def _clip(name: str, limit: int = 63) -> str:
    """The name as PostgreSQL stores an identifier: at most 63 bytes, cut on a character boundary."""
    while len(name.encode()) > limit:
        name = name[:-1]
    return name


def _long(filler: str, tail: str, extra: int) -> str:
    """A name of 63 + ``extra`` bytes (or just under, when ``tail`` cannot fit whole)."""
    body = filler * 70
    target = 63 + extra - len(tail.encode())
    return _clip(body, target) + tail


IDENTIFIERS = st.one_of(
    st.sampled_from(RESERVED),
    st.lists(st.sampled_from(PIECES), min_size=1, max_size=6).map("".join),
    st.builds(
        _long, st.sampled_from(["x", "é"]), st.sampled_from(["", "é", "日"]), st.sampled_from([0, 1, 5])
    ),
)
VALID_JOB_NAMES = st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,39}", fullmatch=True)
JOB_NAMES = st.one_of(
    VALID_JOB_NAMES,
    VALID_JOB_NAMES,
    VALID_JOB_NAMES,
    st.sampled_from(["", "1job", "a-b", "x" * 41, "job name", "é"]),  # invalid
)
COLUMN_TYPES = st.sampled_from(["timestamptz", "timestamp", "date"])
RETAINS = {"0 seconds": timedelta(0), "36 hours": timedelta(hours=36), "5 days": timedelta(days=5)}
# Row expiry values, days from now (None: NULL); 12 hours or more from every cutoff above.
OFFSETS = [None, -10, -3, -1, 2]


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def toml_string(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)  # a TOML basic string: JSON's escapes are TOML's


@dataclass(frozen=True)
class Case:
    table_schema: str
    table: str
    columns: list[tuple[str, str]]  # (name, type)
    expires: list[str]  # as written in the configuration
    retain: str
    job: str
    dbjobs_schema: str


@st.composite
def cases(draw: Any) -> Case:
    names = draw(st.lists(IDENTIFIERS, min_size=2, max_size=2))
    count = draw(st.integers(1, 2))
    columns = draw(st.lists(IDENTIFIERS, min_size=count, max_size=count, unique_by=_clip))
    assume(all(_clip(c) not in ("id", "") for c in columns))
    types = draw(st.lists(COLUMN_TYPES, min_size=count, max_size=count))
    # The expires names as the catalog spells them (an over-long name is not: PostgreSQL clips it).
    expires = [c if draw(st.integers(0, 3)) == 0 else _clip(c) for c in columns]
    dbjobs_schema = draw(
        st.one_of(
            st.just("dbjobs gen"), st.just("dbjobs gen"), IDENTIFIERS, st.sampled_from(["pg_x", "cron"])
        )
    )
    # '%' in dbjobs' own schema is refused: test_a_percent_sign_in_dbjobs_schema.
    assume("%" not in dbjobs_schema)
    return Case(
        names[0], names[1], list(zip(columns, types, strict=True)), expires,
        draw(st.sampled_from(list(RETAINS))), draw(JOB_NAMES), dbjobs_schema,
    )  # fmt: skip


def valid(case: Case) -> bool:
    """Whether dbjobs must accept the case (worked out independently of dbjobs)."""
    import re

    stored = [_clip(c) for c, _ in case.columns]
    schema = case.dbjobs_schema
    return (
        re.fullmatch(r"[A-Za-z][A-Za-z0-9_]{0,39}", case.job) is not None
        and all(e in stored for e in case.expires)
        and not (schema in ("public", "information_schema", "cron") or schema.startswith("pg_"))
        and len(schema.encode()) <= 63
        and "$" not in schema
        and _clip(schema) != _clip(case.table_schema)  # dbjobs' schema must be its own
    )


def _now(app: AppDb) -> datetime:
    return app.execute("SELECT now()")[0][0]


def _value(offset: int | None, kind: str, now: datetime) -> Any:
    if offset is None:
        return None
    at = now + timedelta(days=offset)
    if kind == "date":
        return at.date()
    return at.replace(tzinfo=None) if kind == "timestamp" else at


def _as_utc(value: Any) -> datetime:
    """How dbjobs compares a value with the cutoff: timestamp and date columns read as UTC."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    assert isinstance(value, date)
    return datetime(value.year, value.month, value.day, tzinfo=UTC)


def nothing_changed(
    app: AppDb, schemas: set[str], before: list[tuple[Any, ...]], table: sql.Composable
) -> None:
    """No schema made or left (dbjobs' own), no pg_cron job, the table's rows as they were."""
    assert app.schemas() == schemas
    assert app.cron_jobs() == [] and app.maintenance_job() == []
    assert app.execute(sql.SQL("SELECT * FROM {} ORDER BY id").format(table)) == before


def check_refusal(result: Any) -> None:
    """Exit 2, nothing on stdout, one `dbjobs: error:` line per problem."""
    assert result.code == 2, (result.code, result.out, result.err)
    assert result.out == ""
    lines = result.err.splitlines()
    assert lines and all(line.startswith("dbjobs: error: ") for line in lines), result.err


@pytest.mark.slow
def test_generated_identifiers_and_configurations(app_separate: AppDb, dbjobs_cli, write_config) -> None:
    app = app_separate
    tried = {"cases": 0, "installed": 0}

    @SETTINGS
    @given(case=cases(), rows=st.lists(st.tuples(*[st.sampled_from(OFFSETS)] * 2), min_size=1, max_size=6))
    def check(case: Case, rows: list[tuple[int | None, int | None]]) -> None:
        tried["cases"] += 1
        table = sql.Identifier(case.table_schema, case.table)
        columns = sql.SQL(", ").join(
            sql.SQL("{} {}").format(sql.Identifier(name), sql.SQL(kind)) for name, kind in case.columns
        )
        app.execute(
            sql.SQL("CREATE SCHEMA IF NOT EXISTS {}; CREATE TABLE {} (id int PRIMARY KEY, {})").format(
                sql.Identifier(case.table_schema), table, columns
            )
        )
        try:
            now = _now(app)
            inserted = [
                (i, *(_value(offsets[k], kind, now) for k, (_, kind) in enumerate(case.columns)))
                for i, offsets in enumerate(rows)
            ]
            # Values as literals, not parameters: with parameters, psycopg reads a '%' in a
            # composed identifier as a placeholder.
            values = sql.SQL(", ").join(
                sql.SQL("({})").format(sql.SQL(", ").join(map(sql.Literal, row))) for row in inserted
            )
            app.execute(sql.SQL("INSERT INTO {} VALUES {}").format(table, values))
            before = app.execute(sql.SQL("SELECT * FROM {} ORDER BY id").format(table))
            schemas = app.schemas()
            config = write_config(
                f"schema = {toml_string(case.dbjobs_schema)}\n"
                f"[jobs.{toml_string(case.job)}]\n"
                f"table = {toml_string(quote_ident(case.table_schema) + '.' + quote_ident(case.table))}\n"
                f"expires = [{', '.join(toml_string(e) for e in case.expires)}]\n"
                f"retain = {toml_string(case.retain)}\n"
                'schedule = "0 * * * *"\n'
            )
            installed = dbjobs_cli("--dsn", app.dsn, "--config", config, "install")
            if not valid(case):
                check_refusal(installed)
                nothing_changed(app, schemas, before, table)
                return
            assert installed.code == 0, (case, installed.err)
            tried["installed"] += 1
            try:
                ran = dbjobs_cli("--dsn", app.dsn, "--config", config, "run", case.job)
                assert ran.code == 0, (case, ran.out)
                ran_at = _now(app)
                retain = RETAINS[case.retain]
                expected = [
                    row
                    for row in before
                    if not any(
                        v is not None and _as_utc(v) < ran_at - retain
                        for v, (name, _) in zip(row[1:], case.columns, strict=True)
                        if _clip(name) in case.expires
                    )
                ]
                assert app.execute(sql.SQL("SELECT * FROM {} ORDER BY id").format(table)) == expected, case
                assert f"{case.job}: deleted {len(before) - len(expected)} row" in ran.out
            finally:
                removed = dbjobs_cli("--dsn", app.dsn, "--config", config, "uninstall")
                assert removed.code == 0, removed.err
                nothing_changed(app, schemas, expected, table)
        finally:
            app.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(case.table_schema)))

    check()
    print(f"generated configurations: {tried['cases']} cases, {tried['installed']} installed")
    assert tried["installed"] >= 5 and tried["cases"] - tried["installed"] >= 5, tried


def test_a_percent_sign_in_dbjobs_schema(app_separate: AppDb, dbjobs_cli, write_config) -> None:
    app = app_separate
    app.execute("CREATE TABLE sessions (id int PRIMARY KEY, expires_at timestamptz)")
    config = write_config(
        'schema = "db%jobs"\n[jobs.sessions]\ntable = "sessions"\nexpires = ["expires_at"]\n'
        'retain = "1 day"\nschedule = "0 * * * *"\n'
    )
    result = dbjobs_cli("--dsn", app.dsn, "--config", config, "install")
    # Refused in one line before anything changes (psycopg would read '%' as a placeholder).
    assert result.code == 2, result.err
    [line] = result.err.splitlines()
    assert line.startswith("dbjobs: error: ") and line.endswith(
        "dbjobs.toml: schema: 'db%jobs' must be at most 63 bytes, without '$' or '%'"
    )
    assert "db%jobs" not in app.schemas()


# ---------------------------------------------------------------- where predicates


@dataclass(frozen=True)
class Row:
    id: int
    expired: bool
    flag: bool | None
    n: int | None
    label: str | None


@dataclass(frozen=True)
class Predicate:
    """A `where` predicate as SQL, and the same predicate in Python with SQL's NULL logic."""

    sql: str
    holds: Any  # Callable[[Row], bool | None]


def _not(p: Predicate) -> Predicate:
    return Predicate(f"NOT ({p.sql})", lambda r: None if (v := p.holds(r)) is None else not v)


def _and(a: Predicate, b: Predicate, spacing: str) -> Predicate:
    def holds(r: Row) -> bool | None:
        x, y = a.holds(r), b.holds(r)
        if x is False or y is False:
            return False
        return None if x is None or y is None else True

    return Predicate(f"({a.sql}){spacing}AND{spacing}({b.sql})", holds)


def _or(a: Predicate, b: Predicate, spacing: str) -> Predicate:
    def holds(r: Row) -> bool | None:
        x, y = a.holds(r), b.holds(r)
        if x is True or y is True:
            return True
        return None if x is None or y is None else False

    return Predicate(f"({a.sql}){spacing}or{spacing}({b.sql})", holds)


LABELS = ["a", "it's", "%", ";", "--", "日本", "b"]


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


ATOMS = st.one_of(
    st.just(Predicate("flag", lambda r: r.flag)),
    st.just(Predicate("TRUE", lambda r: True)),
    st.just(Predicate("false", lambda r: False)),
    st.integers(0, 5).map(lambda k: Predicate(f"n > {k}", lambda r: None if r.n is None else r.n > k)),
    st.integers(2, 3).map(
        lambda m: Predicate(f"n % {m} = 0", lambda r: None if r.n is None else r.n % m == 0)
    ),
    st.sampled_from(LABELS).map(
        lambda t: Predicate(f"label = {_literal(t)}", lambda r: None if r.label is None else r.label == t)
    ),
    st.just(Predicate("label IS NULL", lambda r: r.label is None)),
    st.just(Predicate("n is not null", lambda r: r.n is not None)),
)
SPACING = st.sampled_from([" ", "\n", "  ", " /* c */ "])
PREDICATES = st.recursive(
    ATOMS,
    lambda inner: st.one_of(
        inner.map(_not), st.builds(_and, inner, inner, SPACING), st.builds(_or, inner, inner, SPACING)
    ),
    max_leaves=5,
)
# Not one boolean expression the planner accepts: each must be refused at install.
INVALID = st.sampled_from(
    [
        "n",  # not boolean
        "flag, n",
        "flag) OR (n > 1",
        "flag; DELETE FROM sessions",
        "no_such_column",
        "n >",
        "label = 'unterminated",
        "pg_sleep(0)",
        "1",
        "flag AND no_such_function(n)",
        "*",
        "",
    ]
)
ROWS = st.lists(
    st.tuples(
        st.booleans(),
        st.sampled_from([True, False, None]),
        st.sampled_from([None, 0, 1, 2, 3, 4, 5]),
        st.sampled_from([None, *LABELS]),
    ),
    min_size=1,
    max_size=12,
)
WHERE_CONFIG = """
[jobs.sessions]
table = "sessions"
expires = ["expires_at"]
retain = "1 day"
schedule = "0 * * * *"
where = {where}
"""


@pytest.mark.slow
def test_generated_where_predicates(app_separate: AppDb, dbjobs_cli, write_config) -> None:
    app = app_separate
    app.execute(
        "CREATE TABLE sessions (id int PRIMARY KEY, expires_at timestamptz, flag boolean, n int, label text)"
    )
    first = dbjobs_cli(
        "--dsn", app.dsn, "--config", write_config(WHERE_CONFIG.format(where='"true"')), "install"
    )
    assert first.code == 0, first.err
    tried = {"cases": 0, "installed": 0}

    def fill(rows: list[tuple[bool, bool | None, int | None, str | None]]) -> list[Row]:
        made = [Row(i, *row) for i, row in enumerate(rows)]
        values = sql.SQL(", ").join(
            sql.SQL("({}, now() + {}::interval, {}, {}, {})").format(
                r.id, "-3 days" if r.expired else "1 day", r.flag, r.n, r.label
            )
            for r in made
        )
        app.execute(sql.SQL("TRUNCATE sessions; INSERT INTO sessions VALUES {}").format(values))
        return made

    def ids() -> list[int]:
        return [r[0] for r in app.execute("SELECT id FROM sessions ORDER BY id")]

    @SETTINGS
    @given(predicate=st.one_of(PREDICATES, PREDICATES, PREDICATES, INVALID), rows=ROWS, comment=st.booleans())
    def check(predicate: Predicate | str, rows: list[Any], comment: bool) -> None:
        tried["cases"] += 1
        made = fill(rows)
        text = predicate.sql if isinstance(predicate, Predicate) else predicate
        if comment:
            text += " -- a trailing comment"
        config = write_config(WHERE_CONFIG.format(where=toml_string(text)))
        before = (app.execute("SELECT * FROM dbjobs.job"), app.cron_jobs(), ids())
        installed = dbjobs_cli("--dsn", app.dsn, "--config", config, "install")
        if not isinstance(predicate, Predicate):
            check_refusal(installed)
            assert (app.execute("SELECT * FROM dbjobs.job"), app.cron_jobs(), ids()) == before
            return
        assert installed.code == 0, (text, installed.err)
        tried["installed"] += 1
        ran = dbjobs_cli("--dsn", app.dsn, "--config", config, "run", "sessions")
        assert ran.code == 0, (text, ran.out)
        expected = [r.id for r in made if not (r.expired and predicate.holds(r) is True)]
        assert ids() == expected, (text, made)

    check()
    print(f"generated where predicates: {tried['cases']} cases, {tried['installed']} installed")
    assert tried["installed"] >= 10 and tried["cases"] - tried["installed"] >= 5, tried
