"""No secret leaves the machine (issue 22): a PostgreSQL ledger that asks for a password, the password given
each way libpq takes one, and everything a sweep writes grepped for it: what the commands print, the wandb
folders (the binary `.wandb` files too, which hold each run's command line), the export, the report, the
ledger itself and a copy of it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pytest
import yaml

from tests.conftest import PASSWORD, database_name

REPO = Path(__file__).resolve().parents[1]
# what a leak would hold, whichever form it took: as typed, percent-encoded, or cut at a '/', '@' or ':'
LEAKS = (PASSWORD.split("%")[0], "Sweep/K", quote(PASSWORD, safe="").split("%25")[1])


def leaks(data: bytes | str) -> list[str]:
    text = data if isinstance(data, bytes) else data.encode()
    return [leak for leak in LEAKS if leak.encode() in text]


@pytest.fixture
def database(password_server, request) -> str:
    """A fresh database of its own on the server that asks for a password."""
    name = database_name(request)
    password_server.create_database(name)
    return name


def url_with_password(server, database: str, scheme: str = "postgresql") -> str:
    return f"{scheme}://postgres:{quote(PASSWORD, safe='')}@127.0.0.1:{server.port}/{database}"


def pgpass(path: Path, server, database: str) -> Path:
    """A libpq password file (':' and '\\' escaped), private as libpq requires."""
    secret = PASSWORD.replace("\\", "\\\\").replace(":", "\\:")
    path.write_text(f"127.0.0.1:{server.port}:{database}:postgres:{secret}\n")
    path.chmod(0o600)
    return path


def service_file(path: Path, server, database: str) -> Path:
    path.write_text(f"[ledger]\nhost=127.0.0.1\nport={server.port}\ndbname={database}\nuser=postgres\n"
                    f"password={PASSWORD}\n")
    return path


# how the password is given -> (the ledger location, environment) for a home folder and a database
SOURCES = {
    "in the URL": lambda s, db, home: (url_with_password(s, db), {}),
    "in a postgres:// URL": lambda s, db, home: (url_with_password(s, db, "postgres"), {}),
    "as a URL parameter": lambda s, db, home: (f"{s.url(db)}?password={quote(PASSWORD, safe='')}", {}),
    "PGPASSWORD": lambda s, db, home: (s.url(db), {"PGPASSWORD": PASSWORD}),
    "~/.pgpass": lambda s, db, home: (pgpass(home / ".pgpass", s, db) and s.url(db), {}),
    "PGPASSFILE": lambda s, db, home: (s.url(db), {"PGPASSFILE": str(pgpass(home / "ledger.pass", s, db))}),
    "a service file (PGSERVICEFILE)": lambda s, db, home: (
        "postgresql://?service=ledger", {"PGSERVICEFILE": str(service_file(home / "services.conf", s, db))}),
}


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A home folder of its own, and no PG* variable from outside: each row gives its password one way."""
    folder = tmp_path / "home"
    folder.mkdir()
    monkeypatch.setenv("HOME", str(folder))
    for name in [n for n in os.environ if n.startswith("PG")]:
        monkeypatch.delenv(name)
    return folder


@pytest.mark.parametrize("source", SOURCES)
def test_every_way_of_giving_the_password_works_and_none_is_shown(source, password_server, database, home,
                                                                   monkeypatch, capsys):
    from asl_sweep import cli

    location, env = SOURCES[source](password_server, database, home)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    shown = []
    for argv in (["sweep", str(REPO / "sweeps" / "smoke.yaml"), "--local"], ["sweeps"], ["sweep", "--pause", None],
                 ["status", None]):
        sweep_id = shown[0].split()[3] if shown else None
        assert cli.main([a or sweep_id for a in argv] + ["--ledger", location]) == 0, capsys.readouterr().err
        out, err = capsys.readouterr()
        shown.append(out)
        assert not leaks(out + err), out + err
    expected = {"in the URL": ":***@127.0.0.1", "in a postgres:// URL": "postgresql://postgres:***@",
                "as a URL parameter": ":***@127.0.0.1", "a service file (PGSERVICEFILE)": "postgresql://?service=ledger"}
    assert expected.get(source, "postgresql://postgres@127.0.0.1") in shown[0]
    assert "paused" in shown[-1]


@pytest.mark.slow
def test_nothing_a_sweep_writes_holds_the_password(tmp_path, password_server, database, home, dataset_dir):
    """A sweep from start to export, as a user runs it with `--ledger URL`: in-process runs (wandb records
    that agent's command line) and subprocess runs (the URL reaches them in the environment)."""
    url = url_with_password(password_server, database)
    smoke = yaml.safe_load((REPO / "sweeps" / "smoke.yaml").read_text())
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(yaml.safe_dump({**smoke, "run_cap": 2, "parameters": {
        **smoke["parameters"], "epochs": {"value": 1}, "filters_1": {"value": 4}}}))
    env = {k: v for k, v in os.environ.items() if k not in ("ASL_SWEEP_LEDGER", "WANDB_API_KEY")}
    env.update(PYTHONPATH=str(REPO), ASL_SWEEP_THREADS="1")
    said: list[str] = []

    def command(*argv: str, code: int = 0) -> str:
        done = subprocess.run([sys.executable, "-m", "asl_sweep", *argv], cwd=Path.cwd(), env=env,
                              capture_output=True, text=True, timeout=600)
        said.append(done.stdout + done.stderr)
        assert done.returncode == code, done.stdout + done.stderr
        return done.stdout

    sweep_id = command("sweep", str(sweep_file), "--local", "--ledger", url).split()[3]
    data = ["--data-dir", str(dataset_dir)]
    command("agent", sweep_id, "--ledger", url, "--count", "1", *data)
    command("agent", sweep_id, f"--ledger={url}", "--count", "1", "--subprocess", *data)
    command("status", sweep_id, "--ledger", url)
    command("sweeps", "--ledger", url)
    command("report", sweep_id, "--ledger", url, "--out", str(tmp_path / "report"))
    command("export", sweep_id, "--ledger", url, "--out", str(tmp_path / "export"))
    command("ledger", "copy", sweep_id, url, str(tmp_path / "copy.db"))
    command("sync", sweep_id, "--ledger", url, code=2)  # offline: one line, nothing uploaded
    assert not leaks("".join(said)), said
    stored = password_server.sql(database, "SELECT (SELECT string_agg(s::text, ' ') FROM sweeps s) || "
                                           "(SELECT string_agg(r::text, ' ') FROM runs r)")[0][0]
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    leaked = {str(p): found for p in files if (found := leaks(p.read_bytes()))}
    assert not leaks(stored) and not leaked, leaked
    wandb_files = [p for p in files if p.suffix == ".wandb"]
    assert len(wandb_files) == 2 and len({p.parent.name for p in wandb_files}) == 2
    # the check has teeth: wandb does record the in-process agent's command line, masked
    assert any(b"postgres:***@127.0.0.1" in p.read_bytes() for p in wandb_files)
    assert (tmp_path / "export" / "model.keras").is_file() and (tmp_path / "copy.db").is_file()
