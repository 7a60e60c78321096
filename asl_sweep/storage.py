"""Where the ledger lives: a SQLite file (one machine; the embedded default) or a PostgreSQL database
(many machines), behind one small interface so that the ledger's SQL, the controller and the agents
never know which one they talk to (as Optuna's RDB storage).

A backend runs the ledger's SQL (written once, with `?` parameters and `{now}`/`{started}`/`{greatest}`/
`{float}`/`{blob}` for what differs), gives transactions, a per-sweep claim lock and a migration lock
(opening a ledger brings its tables to `schema.VERSION`), and says which of its errors mean "the
connection was lost: reconnect and try again" (`is_lost`). Times come from the
database's clock: on a cluster, machines' clocks disagree, the database's is the one every agent shares.
"""

from __future__ import annotations

import os
import re
import sqlite3
from itertools import zip_longest
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, unquote, urlencode

from asl_sweep import schema
from asl_sweep.errors import UserError, one_line

URL_SCHEMES = ("postgresql://", "postgres://")  # libpq's two URI prefixes
URL_LIKE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):(/*)(.*)$", re.S)  # `word:` then `/`: a URL, never a path
SECRET_KEYS = ("password", "sslpassword")  # libpq keywords whose values are never shown
HOST_NAME = re.compile(r"^[A-Za-z0-9._-]+$")
URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:/+\S*")  # a URL inside a message, up to the next blank


class Unreachable(UserError):
    """The database did not answer (down, restarting, unreachable): worth waiting for in an agent."""


def looks_like_url(location: str) -> bool:
    """`word:` then `/`: a URL, to be refused when it is not a ledger's, never taken for a file path."""
    match = URL_LIKE.match(location)
    return bool(match and match.group(2))


def masked_text(location: str) -> str:
    """The location as typed with every possible secret masked, for a URL that does not parse (hand-written:
    libpq has no masker, and its parser fails on exactly these URLs). Deliberately over-cautious: the
    userinfo runs to the *last* `@`, so an unencoded `/` or `@` in a password is masked too, and every
    query value is masked."""
    match = URL_LIKE.match(location)
    if not match or not match.group(2):
        return location
    scheme, slashes, rest = match.groups()
    if "@" in rest:
        userinfo, rest = rest.rsplit("@", 1)
        user = re.split(r"[:@/?]", userinfo, maxsplit=1)[0]
        rest = (user if user == userinfo else f"{user}:***") + "@" + rest
    return f"{scheme}:{slashes}" + re.sub(r"([?&][^=&]*=)[^&]*", r"\1***", rest)


def masked_urls(text: str) -> str:
    """`text` with every URL in it masked as typed: for messages that quote what the user typed (argparse's
    usage errors), where nothing says which word is a ledger URL."""
    return URL_IN_TEXT.sub(lambda match: masked_text(match.group()), text)


def libpq_params(location: str) -> dict[str, str]:
    """The URL's parameters as libpq parses them; none without psycopg or when libpq cannot parse it."""
    try:
        import psycopg
        from psycopg.conninfo import conninfo_to_dict
    except ImportError:
        return {}
    try:
        return conninfo_to_dict(location)
    except psycopg.Error:
        return {}


def secrets_in(location: str) -> list[str]:
    """Every string of `location` that may be a password (as typed and percent-decoded), longest first."""
    found = set()
    match = URL_LIKE.match(location)
    if match and match.group(2):
        rest = match.group(3)
        if "@" in rest:
            userinfo = rest.rsplit("@", 1)[0]
            if ":" in userinfo:
                found.add(userinfo.split(":", 1)[1])
        found.update(re.findall(r"[?&](?:%s)=([^&]*)" % "|".join(SECRET_KEYS), rest))
        found.update(v for k, v in libpq_params(location).items() if k in SECRET_KEYS)
    found |= {unquote(s) for s in found}
    return sorted((s for s in found if s), key=len, reverse=True)


def scrub(text: str, location: str) -> str:
    """`text` (one of our messages, or psycopg's/libpq's, which can quote the URL or a token of it) with
    the location in its display form and every secret of it masked."""
    if location and location in text:
        text = text.replace(location, display(location))
    for secret in secrets_in(location):
        text = text.replace(secret, "***")
    return text


def conninfo(location: str) -> dict[str, str]:
    """A ledger URL's connection parameters as libpq reads them (psycopg's `conninfo_to_dict`), after
    checks that turn each mistake into one line naming it (scheme, slashes, brackets, `@`, `%`, host,
    port, database), the password masked."""
    shown = masked_text(location)
    scheme, slashes, rest = URL_LIKE.match(location).groups()
    if not location.startswith(URL_SCHEMES):
        if scheme in ("postgresql", "postgres"):
            raise UserError(f"ledger {shown}: a PostgreSQL URL starts with {scheme}:// (two slashes), "
                            f"as in postgresql://user@host:5432/database")
        raise UserError(f"ledger {shown}: '{scheme}:' is not a ledger's scheme: only postgresql:// URLs or a "
                        "file path are ledgers (postgres:// too)")
    authority = rest.rsplit("@", 1)[-1].split("/", 1)[0].split("?", 1)[0]
    if authority.count("[") != authority.count("]"):
        raise UserError(f"ledger {shown}: the host has an unclosed '[' (an IPv6 address is written [::1], "
                        "as in postgresql://user@[::1]:5432/database)")
    bad_percent = re.search(r"%(?![0-9A-Fa-f]{2})", rest)
    if bad_percent:
        where = "user name or password" if "@" in rest[bad_percent.start():] else "host, database or parameters"
        raise UserError(f"ledger {shown}: a '%' in the {where} is not percent-encoding (write a % as %25)")
    try:
        import psycopg
        from psycopg.conninfo import conninfo_to_dict
    except ImportError:
        raise UserError("a PostgreSQL ledger needs psycopg: pip install 'asl-sweep[postgresql]'") from None
    try:
        params = conninfo_to_dict(location)
    except psycopg.Error as exc:
        raise UserError(f"ledger {shown}: {scrub(one_line(exc), location)}") from None
    if any("@" in params.get(key, "") for key in ("host", "port", "dbname")):
        raise UserError(f"ledger {shown}: an '@' after the host: a password with '/', '@' or '%' must be "
                        "percent-encoded (%2F, %40, %25), or kept out of the URL (PGPASSWORD, ~/.pgpass)")
    for host in params.get("host", "").split(","):
        if host and not (host.startswith("/") or ":" in host or HOST_NAME.match(host)):
            raise UserError(f"ledger {shown}: host '{host}' is not a host name, an IP address or a socket folder")
    for port in params.get("port", "").split(","):
        if port and not (port.isdigit() and 1 <= int(port) <= 65535):
            raise UserError(f"ledger {shown}: port '{port}' is not a number from 1 to 65535")
    if "/" in params.get("dbname", ""):
        raise UserError(f"ledger {shown}: database '{params['dbname']}' has a '/': the path after the host "
                        "is one database name")
    return params


def is_url(location: str) -> bool:
    """True for a PostgreSQL ledger URL, False for a file path; anything URL-like that is not a ledger's
    URL is one line naming what is wrong (UserError)."""
    if not looks_like_url(location):
        return False
    conninfo(location)
    return True


def display(location: str) -> str:
    """The one display form of a ledger location, safe to print and to write anywhere: a file path as
    given; a URL as postgresql://user:***@host:port/database?other-parameters, whether the password was in
    the userinfo or a parameter (a service file's is never read here); a malformed URL masked as typed."""
    if not looks_like_url(location):
        return location
    try:
        params = conninfo(location)
    except UserError:
        return masked_text(location)
    user = quote(params.pop("user", ""), safe="")
    secret = any([params.pop(key, None) is not None for key in SECRET_KEYS])  # a list: pop every one
    userinfo = f"{user}{':***' if secret else ''}@" if user or secret else ""
    hosts, ports = params.pop("host", "").split(","), params.pop("port", "").split(",")
    ports = ports * len(hosts) if len(ports) == 1 else ports
    netloc = ",".join((f"[{h}]" if ":" in h else quote(h, safe="")) + (f":{p}" if p else "")
                      for h, p in zip_longest(hosts, ports, fillvalue=""))
    database = params.pop("dbname", "")
    path = f"/{quote(database, safe='')}" if database else ""
    query = f"?{urlencode(params)}" if params else ""
    return f"postgresql://{userinfo}{netloc}{path}{query}"


class Backend(Protocol):
    location: str  # what ASL_SWEEP_LEDGER holds for it (absolute path or URL)
    display: str  # the location safe to print
    can_reconnect: bool

    def is_lost(self, exc: BaseException) -> bool:
        """True when `exc` means the connection is gone: reconnect and repeat the unit of work."""

    def execute(self, sql: str, params: tuple | list = ()) -> Any:
        """Run one statement of the ledger's SQL; the cursor's rows are mappings."""

    def begin(self) -> None: ...

    def commit(self) -> None: ...

    def rollback(self) -> None: ...

    def lock_sweep(self, sweep_id: str) -> None:
        """Inside a transaction: wait for, then hold, the sweep's claim lock until commit."""

    def lock_schema(self) -> None:
        """Inside a transaction: hold the ledger's migration lock until commit (`schema.migrate`)."""

    def tables(self) -> set[str]: ...

    def columns(self, table: str) -> set[str]:
        """The table's column names (none when it does not exist)."""

    def reconnect(self) -> None: ...

    def close(self) -> None: ...


def sqlite_error(path: Path, exc: sqlite3.Error) -> UserError:
    """One line naming the ledger file, what is wrong with it and what to do."""
    text = str(exc)
    if "not a database" in text:
        why = "is not an asl-sweep ledger (not a SQLite database); point ASL_SWEEP_LEDGER at another file"
    elif "readonly" in text or "read-only" in text:
        why = "is read-only; make it (and its folder) writable, or copy it somewhere writable"
    elif "locked" in text:
        why = "is locked by another process for too long; try again"
    else:
        why = f"cannot be used: {text}"
    return UserError(f"ledger {path} {why}")


class SQLiteBackend:
    """One file in WAL mode; IMMEDIATE transactions queue every writer, so the claim lock is the file's.
    Not for network filesystems (SQLite's own advice): that is what PostgreSQL is for."""

    can_reconnect = False
    dialect = {"now": "((julianday('now') - 2440587.5) * 86400.0)", "started": "0", "greatest": "max",
               "float": "REAL", "blob": "BLOB"}

    def __init__(self, location: str, *, create: bool) -> None:
        self.path = Path(location)
        if self.path.is_dir():
            raise UserError(f"ledger {self.path} is a folder, not a file; point ASL_SWEEP_LEDGER at a file")
        if not self.path.parent.is_dir():
            raise UserError(f"ledger {self.path}: folder {self.path.parent} does not exist")
        if not create and not self.path.is_file():
            raise UserError(f"no ledger at {self.path}: no local sweep was created here "
                            "(asl-sweep sweep FILE --local), or set ASL_SWEEP_LEDGER")
        self.location = str(self.path.resolve())
        self.display = self.location  # absolute: a message read in another folder still names the file
        try:
            self.db = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
            self.db.row_factory = sqlite3.Row
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute("PRAGMA foreign_keys=ON")
        except sqlite3.Error as exc:
            raise sqlite_error(self.path, exc) from None
        try:
            schema.migrate(self)
        except BaseException:
            self.close()
            raise

    def execute(self, sql: str, params: tuple | list = ()) -> sqlite3.Cursor:
        try:
            return self.db.execute(sql.format(**self.dialect), params)
        except sqlite3.Error as exc:
            raise sqlite_error(self.path, exc) from None

    def is_lost(self, exc: BaseException) -> bool:
        return False

    def begin(self) -> None:
        self.execute("BEGIN IMMEDIATE")

    def commit(self) -> None:
        self.execute("COMMIT")

    def rollback(self) -> None:
        if self.db.in_transaction:
            self.db.execute("ROLLBACK")

    def lock_sweep(self, sweep_id: str) -> None:
        """Nothing more to do: BEGIN IMMEDIATE already holds the file's write lock."""

    def lock_schema(self) -> None:
        """The same: BEGIN IMMEDIATE already holds the file's write lock."""

    def tables(self) -> set[str]:
        return {row["name"] for row in self.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}

    def columns(self, table: str) -> set[str]:
        return {row["name"] for row in self.execute("SELECT name FROM pragma_table_info(?)", (table,))}

    def reconnect(self) -> None:
        raise AssertionError("a SQLite ledger has no connection to lose")

    def close(self) -> None:
        self.db.close()


class PostgresBackend:
    """A PostgreSQL database through psycopg 3, in autocommit mode with explicit READ COMMITTED
    transactions: after waiting for the sweep's row lock, a claim's next statement sees every run that
    the previous claim committed (under REPEATABLE READ its snapshot would predate the wait)."""

    dialect = {"now": "EXTRACT(EPOCH FROM clock_timestamp())::float8",
               "started": "EXTRACT(EPOCH FROM pg_postmaster_start_time())::float8",
               "greatest": "GREATEST", "float": "DOUBLE PRECISION", "blob": "BYTEA"}
    # seconds: a claim holds its lock for milliseconds, so a session idle inside a transaction this long
    # belongs to a machine that vanished; the server aborts it and frees the lock
    IDLE_IN_TRANSACTION_S = 120

    def __init__(self, location: str, *, create: bool) -> None:
        try:
            import psycopg
        except ImportError:
            raise UserError("a PostgreSQL ledger needs psycopg: pip install 'asl-sweep[postgresql]'") from None
        self.psycopg = psycopg
        self.location, self.display = location, display(location)
        self.can_reconnect = True
        self.conn = self._connect()
        try:
            schema.migrate(self)
        except psycopg.Error as exc:
            self.close()
            if self.is_lost(exc):
                raise self._unreachable(exc) from None
            raise
        except BaseException:
            self.close()
            raise

    def _connect(self):
        from psycopg.rows import dict_row

        try:
            return self.psycopg.connect(
                self.location, autocommit=True, row_factory=dict_row, connect_timeout=10,
                application_name="asl-sweep", keepalives_idle=30, keepalives_interval=10, keepalives_count=3,
                options=f"-c idle_in_transaction_session_timeout={self.IDLE_IN_TRANSACTION_S * 1000}")
        except self.psycopg.Error as exc:
            raise self._unreachable(exc) from None

    def _unreachable(self, exc: BaseException) -> Unreachable:
        return Unreachable(f"cannot connect to ledger {self.display}: {scrub(one_line(exc, 240), self.location)}")

    def is_lost(self, exc: BaseException) -> bool:
        """Connection errors, and any error after which the connection is closed (the server ends a session
        idle in a transaction too long with an InternalError, for one)."""
        return isinstance(exc, (self.psycopg.OperationalError, self.psycopg.InterfaceError)) or \
            (isinstance(exc, self.psycopg.Error) and self.conn.closed)

    def execute(self, sql: str, params: tuple | list = ()):
        """One statement; an error that is not a lost connection is one line naming the ledger."""
        try:
            return self.conn.execute(sql.format(**self.dialect).replace("?", "%s"), params)
        except self.psycopg.Error as exc:
            if self.is_lost(exc):
                raise
            raise UserError(f"ledger {self.display}: {scrub(one_line(exc), self.location)}") from None

    def begin(self) -> None:
        self.execute("BEGIN ISOLATION LEVEL READ COMMITTED")

    def commit(self) -> None:
        self.execute("COMMIT")

    def rollback(self) -> None:
        if not self.conn.closed:
            try:
                self.conn.execute("ROLLBACK")
            except self.psycopg.Error:
                pass

    def lock_sweep(self, sweep_id: str) -> None:
        """FOR NO KEY UPDATE: claims queue on it, while inserting runs (a foreign-key check) does not."""
        self.execute("SELECT id FROM sweeps WHERE id = ? FOR NO KEY UPDATE", (sweep_id,))

    def lock_schema(self) -> None:
        """A transaction-scoped advisory lock: agents starting at the same moment migrate one at a time
        (concurrent CREATE TABLE IF NOT EXISTS can collide in PostgreSQL's catalog)."""
        self.execute("SELECT pg_advisory_xact_lock(7426912)")

    def tables(self) -> set[str]:
        return {row["table_name"] for row in self.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()")}

    def columns(self, table: str) -> set[str]:
        return {row["column_name"] for row in self.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() "
            "AND table_name = ?", (table,))}

    def reconnect(self) -> None:
        self.close()
        self.conn = self._connect()

    def close(self) -> None:
        try:
            self.conn.close()
        except self.psycopg.Error:
            pass


def open_backend(location: str, *, create: bool) -> Backend:
    if is_url(location):
        return PostgresBackend(location, create=create)
    return SQLiteBackend(location, create=create)


def default_location() -> str:
    """`ASL_SWEEP_LEDGER` (a file path or a postgresql:// URL), else `asl-sweep.db` here."""
    return os.environ.get("ASL_SWEEP_LEDGER") or "asl-sweep.db"
