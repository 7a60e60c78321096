"""A real PostgreSQL server for tests: Debian's `postgresql` binaries, a cluster in a temporary folder,
listening on a free loopback port. `initdb` refuses root, so as root the server runs as `postgres`.
With a `password`, the server asks for it (scram-sha-256) from every client, as a shared one would."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import quote


def bindir() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(candidates[-1]).parent if candidates else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """initdb + pg_ctl; `url(db)` for psycopg; `restart()` as a crash (immediate stop) and start."""

    def __init__(self, password: str | None = None) -> None:
        self.bin = bindir()
        if self.bin is None:
            raise RuntimeError("PostgreSQL server binaries (initdb) not found: apt-get install postgresql")
        self.root = Path(tempfile.mkdtemp(prefix="asl-sweep-pg-"))  # not under pytest's root-only tmp
        self.root.chmod(0o755)
        self.data, self.port = self.root / "data", free_port()
        self.as_user = "postgres" if os.geteuid() == 0 else None
        self.password = password
        auth = ["-A", "trust"]
        if password:
            (self.root / "pwfile").write_text(password + "\n")
            auth = ["-A", "scram-sha-256", "--pwfile", str(self.root / "pwfile")]
        if self.as_user:
            for path in (self.root, *self.root.iterdir()):
                shutil.chown(path, self.as_user)
        self._run("initdb", "-D", str(self.data), *auth, "-U", "postgres", "--no-sync", "-E", "UTF8")
        (self.root / "pwfile").unlink(missing_ok=True)
        self.start()

    def _run(self, tool: str, *args: str) -> None:
        cmd = [str(self.bin / tool), *args]
        if self.as_user:
            cmd = ["runuser", "-u", self.as_user, "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        if done.returncode:
            raise RuntimeError(f"{tool} failed: {done.stderr.strip() or done.stdout.strip()}")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.root / "log"), "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self) -> None:
        """A crash and a recovery: every connection dies without a goodbye, then the server is back."""
        self.stop("immediate")
        self.start()

    def url(self, database: str = "postgres") -> str:
        """Without the password (a client gives it its own way); `admin_url` has it."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def admin_url(self, database: str = "postgres") -> str:
        secret = f":{quote(self.password, safe='')}" if self.password else ""
        return f"postgresql://postgres{secret}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.admin_url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def sql(self, database: str, statement: str, params: tuple = ()) -> list[tuple]:
        import psycopg

        with psycopg.connect(self.admin_url(database), autocommit=True) as conn:
            cur = conn.execute(statement, params)
            return cur.fetchall() if cur.description else []

    def close(self) -> None:
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
