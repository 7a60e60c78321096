"""Where the ledger lives: SQLite files (older ones upgraded), PostgreSQL URLs (masked when shown, lost
connections retried without a second claim), and one clear line for a ledger that cannot be used."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import psycopg
import pytest

from asl_sweep import controller, schema, storage
from asl_sweep.errors import UserError
from asl_sweep.ledger import Ledger
from asl_sweep.state import RunState

REPO = Path(__file__).resolve().parents[1]
RANDOM = {"method": "random", "metric": {"name": "val_accuracy", "goal": "maximize"}, "run_cap": 4,
          "parameters": {"dropout": {"min": 0.0, "max": 0.8}}}


DISPLAYS = {  # location -> its one display form
    "postgresql://ann:s3cret@db:5432/sweeps": "postgresql://ann:***@db:5432/sweeps",
    "postgres://ann:s3cret@db:5432/sweeps": "postgresql://ann:***@db:5432/sweeps",
    "postgresql://ann@db/sweeps": "postgresql://ann@db/sweeps",
    "postgresql://ann@db/sweeps?password=s3cret": "postgresql://ann:***@db/sweeps",
    "postgresql://ann@db/sweeps?sslmode=require&sslpassword=s3cret": "postgresql://ann:***@db/sweeps?sslmode=require",
    "postgresql:///sweeps?service=cluster": "postgresql:///sweeps?service=cluster",  # its file is never read here
    "postgresql://ann:s3cret@[::1]:5432,db2:5433/sweeps": "postgresql://ann:***@[::1]:5432,db2:5433/sweeps",
    "postgresql://ann:s3%25cret@%2Fvar%2Frun/sweeps": "postgresql://ann:***@%2Fvar%2Frun/sweeps",
    # malformed: masked as typed, over-cautiously (an unencoded / or @ in a password, every parameter value)
    "postgresq://ann:s3cret@db/sweeps": "postgresq://ann:***@db/sweeps",
    "postgresql:/ann:s3cret@db/sweeps": "postgresql:/ann:***@db/sweeps",
    "postgresql://ann:s3/cr@t@db/sweeps": "postgresql://ann:***@db/sweeps",
    "postgresql://ann:s3%cret@[::1/sweeps": "postgresql://ann:***@[::1/sweeps",
    "postgresql://ann@db/sweeps?pasword=s3cret": "postgresql://ann@db/sweeps?pasword=***",
    "ledgers/asl-sweep.db": "ledgers/asl-sweep.db",
}


@pytest.mark.parametrize("location", DISPLAYS)
def test_every_ledger_location_has_one_display_form_without_its_password(location):
    assert storage.display(location) == DISPLAYS[location]
    assert "s3" not in storage.scrub(f"libpq: bad token \"{location}\" in {location}", location)


SECRET = "Hunter2"
MALFORMED = {  # location -> words its one line holds (with the password masked)
    "postgresq://ann:Hunter2@db/sweeps": ("postgresq://ann:***@db/sweeps", "'postgresq:' is not a ledger's scheme",
                                          "only postgresql:// URLs or a file path are ledgers"),
    "mysql://ann:Hunter2@db/sweeps": ("'mysql:' is not a ledger's scheme",),
    "postgresql:/ann:Hunter2@db/sweeps": ("postgresql:/ann:***@db/sweeps", "two slashes"),
    "postgresql://ann:Hunter2@[::1/sweeps": ("postgresql://ann:***@[::1/sweeps", "unclosed '['"),
    "postgresql://ann:Hunter2%zz@db/sweeps": ("'%' in the user name or password", "%25"),
    "postgresql://ann:Hunter2@db:54x2/sweeps": ("port '54x2' is not a number",),
    "postgresql://ann:Hunter2@db:99999/sweeps": ("port '99999'",),
    "postgresql://ann:Hunter2/x@db/sweeps": ("postgresql://ann:***@db/sweeps", "'@' after the host", "%2F"),
    "postgresql://ann:Hunter2@d%21b/sweeps": ("host 'd!b' is not a host name",),
    "postgresql://ann:Hunter2@db/sweeps/2024": ("database 'sweeps/2024' has a '/'",),
    "postgresql://ann:Hunter 2@db/sweeps": ("unexpected spaces found in",),
    "postgresql://ann@db/sweeps?pasword=Hunter2": ('invalid URI query parameter: "pasword"',),
    "postgresql://ann@127.0.0.1:1/sweeps?password=Hunter2": ("cannot connect to ledger postgresql://ann:***@127.0.0.1:1/sweeps",),
}
COMMANDS = {  # command -> its arguments for a ledger location given with --ledger
    "sweep": lambda loc: ["sweep", str(REPO / "sweeps" / "smoke.yaml"), "--local", "--ledger", loc],
    "sweep --pause": lambda loc: ["sweep", "--pause", "abcd1234", "--ledger", loc],
    "agent": lambda loc: ["agent", "abcd1234", "--ledger", loc],
    "sweeps": lambda loc: ["sweeps", "--ledger", loc],
    "status": lambda loc: ["status", "abcd1234", "--ledger", loc],
    "sync": lambda loc: ["sync", "abcd1234", "--ledger", loc],
    "report": lambda loc: ["report", "abcd1234", "--ledger", loc, "--out", "report"],
    "export": lambda loc: ["export", "abcd1234", "--ledger", loc, "--out", "export"],
    "ledger copy": lambda loc: ["ledger", "copy", "abcd1234", loc, "copy.db"],
    "status, ASL_SWEEP_LEDGER": lambda loc: ["status", "abcd1234"],
}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("location", MALFORMED)
def test_a_malformed_ledger_location_is_the_same_one_line_from_every_command(location, command, monkeypatch, capsys):
    from asl_sweep import cli

    monkeypatch.setenv("ASL_SWEEP_LEDGER", location)
    with pytest.raises(UserError) as reference:
        Ledger(location)
    capsys.readouterr()
    code = cli.main(COMMANDS[command](location))
    out, err = capsys.readouterr()
    assert code == 2 and err == f"asl-sweep: error: {reference.value}\n", err
    assert all(words in err for words in MALFORMED[location]), err
    assert SECRET not in out + err and not out
    assert not any(Path(name).exists() for name in ("report", "export", "copy.db"))


def test_an_unreachable_postgresql_ledger_is_one_line_without_its_password(postgres_server):
    url = f"postgresql://postgres:hunter2@127.0.0.1:{postgres_server.port}/no_such_db"
    with pytest.raises(UserError, match=r"cannot connect to ledger postgresql://postgres:\*\*\*@") as err:
        Ledger(url)
    assert "hunter2" not in str(err.value) and "\n" not in str(err.value)


def test_a_claim_whose_commit_answer_was_lost_is_found_not_repeated(postgres_url, monkeypatch):
    """The connection drops after COMMIT reached the server: the retry finds the claim by its id."""
    ledger = Ledger(postgres_url)
    sid = ledger.create_sweep(RANDOM, "lost")
    real_commit, lost = ledger.backend.commit, []

    def commit_then_drop() -> None:
        real_commit()
        if not lost:
            lost.append(True)
            ledger.backend.conn.close()
            raise psycopg.OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(ledger.backend, "commit", commit_then_drop)
    run = controller.claim_next(ledger, sid, "a")
    assert lost and [r.id for r in ledger.runs(sid)] == [run.id]


def test_a_claim_whose_commit_never_landed_is_made_again(postgres_url, monkeypatch):
    ledger = Ledger(postgres_url)
    sid = ledger.create_sweep(RANDOM, "aborted")
    real_commit, lost = ledger.backend.commit, []

    def drop_before_commit() -> None:
        if not lost:
            lost.append(True)
            ledger.backend.conn.close()
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        real_commit()

    monkeypatch.setattr(ledger.backend, "commit", drop_before_commit)
    run = controller.claim_next(ledger, sid, "a")
    assert lost and [(r.id, r.number) for r in ledger.runs(sid)] == [(run.id, 1)]


def test_a_url_of_another_database_is_refused():
    with pytest.raises(UserError, match="only postgresql:// URLs or a file path"):
        Ledger("mysql://db/sweeps")


def test_a_ledger_file_of_an_earlier_version_is_upgraded_keeping_its_runs(tmp_path):
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.executescript("""
            CREATE TABLE sweeps (id TEXT PRIMARY KEY, name TEXT NOT NULL, config TEXT NOT NULL,
                                 state TEXT NOT NULL DEFAULT 'running', created_at REAL NOT NULL);
            CREATE TABLE runs (id TEXT PRIMARY KEY, sweep_id TEXT NOT NULL REFERENCES sweeps(id), number INTEGER NOT NULL,
                config TEXT NOT NULL, state TEXT NOT NULL, should_stop INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL,
                heartbeat_at REAL NOT NULL, ended_at REAL, history TEXT NOT NULL DEFAULT '[]',
                summary TEXT NOT NULL DEFAULT '{}', record_path TEXT, wandb_dir TEXT, agent TEXT, error TEXT,
                UNIQUE (sweep_id, number));""")
        db.execute("INSERT INTO sweeps VALUES ('s1', 'old', ?, 'finished', 1.0)", (json.dumps(RANDOM),))
        db.execute("INSERT INTO runs (id, sweep_id, number, config, state, created_at, heartbeat_at, history) "
                   "VALUES ('r1', 's1', 1, '{}', 'finished', 1.0, 1.0, ?)",
                   (json.dumps([{"epoch": 1, "val_accuracy": 0.5}, {"epoch": 2, "val_accuracy": 0.6}]),))
    with Ledger(path) as ledger:
        run = ledger.runs("s1")[0]
    assert run.history == [{"epoch": 1, "val_accuracy": 0.5}, {"epoch": 2, "val_accuracy": 0.6}]
    assert run.attempt == 1 and run.state == RunState.FINISHED


def test_a_session_the_server_ended_for_idling_in_a_transaction_is_reconnected_and_repeated(postgres_url):
    """PostgreSQL reports that end as an InternalError, not a connection error: it is a lost connection all
    the same (a suspended job, a paused VM)."""
    ledger = Ledger(postgres_url)
    sid = ledger.create_sweep(RANDOM, "idle")
    tries = []

    def work() -> str:
        tries.append(1)
        with ledger.transaction():
            if len(tries) == 1:
                ledger.execute("SET idle_in_transaction_session_timeout = 200")
                import time

                time.sleep(0.6)  # the server ends the session meanwhile
            return ledger.sweep(sid)["state"]

    assert ledger.retrying(work) == "running" and len(tries) == 2


def test_a_postgresql_error_that_is_not_a_lost_connection_is_one_line(postgres_url):
    ledger = Ledger(postgres_url)
    with pytest.raises(UserError, match=r"^ledger postgresql://.*relation \"nope\" does not exist"):
        ledger.execute("SELECT * FROM nope")


# The tables as the last release before schema versions made them (storage.SCHEMA at f9e236e), with its
# dialect filled in: every ledger in use today looks like this, on either backend.
PREVIOUS_RELEASE = """
CREATE TABLE sweeps (id TEXT PRIMARY KEY, name TEXT NOT NULL, config TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'running', created_at {float} NOT NULL);
CREATE TABLE runs (id TEXT PRIMARY KEY, sweep_id TEXT NOT NULL REFERENCES sweeps(id), number INTEGER NOT NULL,
    config TEXT NOT NULL, state TEXT NOT NULL, should_stop INTEGER NOT NULL DEFAULT 0, created_at {float} NOT NULL,
    heartbeat_at {float} NOT NULL, ended_at {float}, summary TEXT NOT NULL DEFAULT '{{}}', record_path TEXT,
    wandb_dir TEXT, agent TEXT, error TEXT, attempt INTEGER NOT NULL DEFAULT 1, claim TEXT,
    preemptions INTEGER NOT NULL DEFAULT 0, record TEXT, UNIQUE (sweep_id, number));
CREATE INDEX runs_by_sweep ON runs (sweep_id, state);
CREATE INDEX runs_by_claim ON runs (claim);
CREATE TABLE epochs (run_id TEXT NOT NULL REFERENCES runs(id), step INTEGER NOT NULL, row TEXT NOT NULL,
    PRIMARY KEY (run_id, step));
CREATE TABLE models (run_id TEXT PRIMARY KEY REFERENCES runs(id), data {blob} NOT NULL);
INSERT INTO sweeps VALUES ('s1', 'old', '{config}', 'finished', 1.0);
INSERT INTO runs (id, sweep_id, number, config, state, created_at, heartbeat_at, ended_at, summary, attempt)
    VALUES ('r1', 's1', 1, '{{"dropout": 0.5}}', 'finished', 1.0, 2.0, 3.0, '{{"val_accuracy": 0.6}}', 2);
INSERT INTO epochs VALUES ('r1', 1, '{{"epoch": 1, "val_accuracy": 0.6}}')
"""


def old_ledger(kind: str, location: str) -> str:
    """A ledger at `location` as the previous release left it, with one finished run."""
    script = PREVIOUS_RELEASE.format(config=json.dumps(RANDOM), **(
        storage.SQLiteBackend if kind == "sqlite" else storage.PostgresBackend).dialect)
    if kind == "sqlite":
        with sqlite3.connect(location) as db:
            db.executescript(script)
    else:
        with psycopg.connect(location, autocommit=True) as db:
            for statement in script.split(";"):
                db.execute(statement)
    return location


def kind_of(location: str) -> str:
    return "postgresql" if location.startswith("postgresql") else "sqlite"


def test_a_ledger_of_the_previous_release_is_versioned_on_open_keeping_its_runs(ledger_location):
    old_ledger(kind_of(ledger_location), ledger_location)
    with Ledger(ledger_location) as ledger:
        assert schema.version_of(ledger.backend) == schema.VERSION
        [run] = ledger.runs("s1")
        assert (run.id, run.state, run.attempt, run.config) == ("r1", RunState.FINISHED, 2, {"dropout": 0.5})
        assert run.history == [{"epoch": 1, "val_accuracy": 0.6}] and run.summary == {"val_accuracy": 0.6}
        assert ledger.sweep("s1")["state"] == "finished"
        sid = ledger.create_sweep(RANDOM, "new")
        assert controller.claim_next(ledger, sid, "a").number == 1
    with Ledger(ledger_location) as again:  # opened again: nothing left to do
        assert [r["version"] for r in again.execute("SELECT version FROM schema_version")] == [schema.VERSION]


def test_a_ledger_made_by_a_newer_asl_sweep_is_refused_in_one_line(ledger_location):
    Ledger(ledger_location).close()
    with Ledger(ledger_location) as ledger:
        ledger.execute("INSERT INTO schema_version (version, applied_at) VALUES (?, 0)", (schema.VERSION + 1,))
    with pytest.raises(UserError) as err:
        Ledger(ledger_location)
    message = str(err.value)
    assert f"has schema version {schema.VERSION + 1}, newer than this asl-sweep knows ({schema.VERSION})" in message
    assert "pip install -U asl-sweep" in message and "\n" not in message


def test_a_migration_that_fails_changes_nothing(ledger_location, monkeypatch):
    """The steps run in one transaction (DDL included, on both backends): a failure leaves the old ledger."""
    old_ledger(kind_of(ledger_location), ledger_location)

    def half_done(backend) -> None:
        backend.execute("ALTER TABLE runs ADD COLUMN half TEXT")
        raise UserError("migration failed")

    monkeypatch.setattr(schema, "STEPS", (half_done,))
    with pytest.raises(UserError, match="migration failed"):
        Ledger(ledger_location)
    if kind_of(ledger_location) == "sqlite":
        with sqlite3.connect(ledger_location) as db:
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            columns = {r[1] for r in db.execute("PRAGMA table_info(runs)")}
    else:
        with psycopg.connect(ledger_location) as db:
            tables = {r[0] for r in db.execute("SELECT table_name FROM information_schema.tables "
                                               "WHERE table_schema = current_schema()")}
            columns = {r[0] for r in db.execute("SELECT column_name FROM information_schema.columns "
                                                "WHERE table_name = 'runs'")}
    assert "schema_version" not in tables and "half" not in columns
