"""A throw-away PostgreSQL server for tests: a fresh cluster (initdb) on a free loopback port.

`bash tests/run` installs the server binaries (Debian's `postgresql`) when they are missing;
`find_bin_dir` looks for them in `/usr/lib/postgresql/*/bin` (the newest version wins), then on
PATH. PostgreSQL refuses to run as root: as root, the cluster belongs to an unprivileged system
user (`postgres` when it exists, else `trialscreen-pg`, made here) and its commands run through
`runuser`; as anyone else, they run as that user.

`running_postgres` starts the server with trust authentication on 127.0.0.1 only, creates the
database `trialscreen` and stops the server at the end. `create_database` and `drop_database`
give each test a database of its own on it.
"""

import contextlib
import os
import pwd
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo
from sqlalchemy.engine import URL, make_url

from tests.loopback import free_port

DATABASE = "trialscreen"
FALLBACK_USER = "trialscreen-pg"
DEBIAN_BIN_DIRS = Path("/usr/lib/postgresql")

COMMAND_TIMEOUT_S = 120.0
START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 30
CONNECT_TIMEOUT_S = 10
# The server's own settings (PG* variables) must not steer pg_ctl or initdb to another cluster.
_PG_ENV = ("PGDATA", "PGHOST", "PGHOSTADDR", "PGPORT", "PGUSER", "PGDATABASE", "PGPASSWORD")


class PostgresError(RuntimeError):
    """The test PostgreSQL server could not be set up, started or stopped."""


@dataclass(frozen=True)
class PostgresServer:
    url: str
    """SQLAlchemy URL of the `trialscreen` database: postgresql+psycopg://user@127.0.0.1:port/..."""
    pid: int
    """The postmaster's PID."""
    data_dir: Path
    port: int
    user: str
    log_path: Path


def find_bin_dir() -> Path | None:
    """The directory holding `initdb` and `pg_ctl`, or None when the server is not installed."""
    found = [
        path.parent
        for path in DEBIAN_BIN_DIRS.glob("*/bin/initdb")
        if (path.parent / "pg_ctl").is_file()
    ]
    if found:
        return max(found, key=lambda bin_dir: _version_key(bin_dir.parent.name))
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        bin_dir = Path(directory)
        if directory and (bin_dir / "initdb").is_file() and (bin_dir / "pg_ctl").is_file():
            return bin_dir
    return None


def installed() -> bool:
    return find_bin_dir() is not None


@contextlib.contextmanager
def running_postgres(work_dir: Path) -> Iterator[PostgresServer]:
    """A fresh cluster in `work_dir/data`, serving on 127.0.0.1, stopped when the block ends.

    As root, `work_dir` is handed to the server's user, so every directory above it must be
    searchable by that user (a directory made by `tempfile.mkdtemp()` in /tmp is; pytest's
    `tmp_path` under /tmp/pytest-of-root is not).
    """
    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise PostgresError(
            "PostgreSQL server binaries (initdb, pg_ctl) not found in "
            f"{DEBIAN_BIN_DIRS}/*/bin or on PATH: run bash tests/run to install PostgreSQL"
        )
    work_dir = work_dir.resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    user, prefix = _server_user()
    data_dir = work_dir / "data"
    socket_dir = work_dir / "socket"
    log_path = work_dir / "postgres.log"
    socket_dir.mkdir(exist_ok=True)
    if os.geteuid() == 0:
        entry = pwd.getpwnam(user)
        for path in (work_dir, socket_dir):
            os.chown(path, entry.pw_uid, entry.pw_gid)
        if _run([*prefix, "test", "-w", str(work_dir), "-a", "-x", str(work_dir)]).returncode:
            raise PostgresError(
                f"user {user} cannot use {work_dir}: every directory above it must be "
                f"searchable by {user} (make the work directory with tempfile.mkdtemp())"
            )

    initdb = [
        str(bin_dir / "initdb"),
        "--pgdata",
        str(data_dir),
        "--username",
        user,
        "--auth",
        "trust",
        "--no-locale",
        "--encoding",
        "UTF8",
        "--no-sync",
    ]
    _check(_run([*prefix, *initdb], cwd=work_dir), "initdb")

    port, pid = _start(bin_dir, prefix, data_dir, socket_dir, log_path)
    server = PostgresServer(
        url=f"postgresql+psycopg://{user}@127.0.0.1:{port}/{DATABASE}",
        pid=pid,
        data_dir=data_dir,
        port=port,
        user=user,
        log_path=log_path,
    )
    try:
        with psycopg.connect(_conninfo(make_url(server.url)), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))
        yield server
    finally:
        _stop(bin_dir, prefix, server)


def create_database(server_url: str, name: str) -> str:
    """Create the database `name` on the server of `server_url`; its SQLAlchemy URL."""
    url = make_url(server_url)
    with psycopg.connect(_conninfo(url), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return url.set(database=name).render_as_string(hide_password=False)


def drop_database(database_url: str) -> None:
    """Drop the database of `database_url` if it exists, closing any session still on it."""
    url = make_url(database_url)
    if not url.database:
        raise PostgresError(f"no database named in {url!r}")
    with psycopg.connect(_conninfo(url), autocommit=True) as conn:
        query = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
        conn.execute(query.format(sql.Identifier(url.database)))


def _conninfo(url: URL) -> str:
    """psycopg connection string for the maintenance database of `url`'s server."""
    args: dict[str, Any] = {
        "host": url.host or "127.0.0.1",
        "port": url.port or 5432,
        "dbname": "postgres",
        "connect_timeout": CONNECT_TIMEOUT_S,
    }
    if url.username:
        args["user"] = url.username
    if url.password is not None:
        args["password"] = url.password
    return make_conninfo(**args)


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in name.split(".") if part.isdigit())


def _server_user() -> tuple[str, list[str]]:
    """The user the server runs as, and the command prefix that runs a command as that user."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid()).pw_name, []
    user = "postgres" if _user_exists("postgres") else FALLBACK_USER
    if not _user_exists(user):
        made = _run(
            [
                "useradd",
                "--system",
                "--user-group",
                "--no-create-home",
                "--shell",
                "/bin/false",
                user,
            ]
        )
        # 9: someone else made it meanwhile.
        if made.returncode not in (0, 9) or not _user_exists(user):
            raise PostgresError(f"useradd {user} failed ({made.returncode}): {made.stdout}")
    return user, ["runuser", "-u", user, "--"]


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _start(
    bin_dir: Path, prefix: list[str], data_dir: Path, socket_dir: Path, log_path: Path
) -> tuple[int, int]:
    """Start the server on a free port (another one if the port is taken meanwhile)."""
    attempts = 3
    for attempt in range(1, attempts + 1):
        port = free_port()
        options = f"-c listen_addresses=127.0.0.1 -p {port} -k {socket_dir} -c fsync=off"
        start = [
            str(bin_dir / "pg_ctl"),
            "--pgdata",
            str(data_dir),
            "--log",
            str(log_path),
            "--options",
            options,
            "--wait",
            "--timeout",
            str(START_TIMEOUT_S),
            "start",
        ]
        result = _run([*prefix, *start], cwd=data_dir.parent, timeout=START_TIMEOUT_S + 30)
        if result.returncode == 0:
            return port, _postmaster_pid(data_dir, log_path)
        tail = _log_tail(log_path)
        # pg_ctl gives up when the postmaster exits; leave nothing running on any other failure.
        _kill_postmaster(data_dir)
        if ("could not bind" in tail or "already in use" in tail) and attempt < attempts:
            continue
        raise PostgresError(
            f"pg_ctl start failed ({result.returncode}): {result.stdout.strip()}\n"
            f"server log {log_path}:\n{tail}"
        )
    raise AssertionError("unreachable")


def _stop(bin_dir: Path, prefix: list[str], server: PostgresServer) -> None:
    """`pg_ctl stop -m fast`; kill the postmaster by its PID if it is still there after that."""
    stop = [
        str(bin_dir / "pg_ctl"),
        "--pgdata",
        str(server.data_dir),
        "--mode",
        "fast",
        "--wait",
        "--timeout",
        str(STOP_TIMEOUT_S),
        "stop",
    ]
    result = _run([*prefix, *stop], cwd=server.data_dir.parent, timeout=STOP_TIMEOUT_S + 30)
    if result.returncode == 0 and not _alive(server.pid):
        return
    _kill(server.pid)
    if _alive(server.pid):
        raise PostgresError(
            f"PostgreSQL (PID {server.pid}) did not stop: {result.stdout.strip()}\n"
            f"server log {server.log_path}:\n{_log_tail(server.log_path)}"
        )


def _postmaster_pid(data_dir: Path, log_path: Path) -> int:
    try:
        return int((data_dir / "postmaster.pid").read_text().splitlines()[0])
    except (OSError, ValueError, IndexError) as error:
        raise PostgresError(
            f"no postmaster PID in {data_dir}/postmaster.pid ({error}); server log:\n"
            f"{_log_tail(log_path)}"
        ) from error


def _kill_postmaster(data_dir: Path) -> None:
    """Kill the postmaster named in `data_dir/postmaster.pid`, if that PID is still a postgres."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        pid = int((data_dir / "postmaster.pid").read_text().splitlines()[0])
        if b"postgres" in Path(f"/proc/{pid}/cmdline").read_bytes():
            _kill(pid)


def _kill(pid: int) -> None:
    """SIGKILL the postmaster and wait (10 s at most) until it is gone."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10.0
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by its parent) is gone for our purposes.
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return status.rsplit(")", 1)[-1].split()[0] != "Z"


def _run(
    command: Sequence[str], cwd: Path | None = None, timeout: float = COMMAND_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    """Run a command with its output captured; kill its whole process group on timeout."""
    env = {k: v for k, v in os.environ.items() if k not in _PG_ENV}
    env["LC_ALL"] = "C"  # messages in English, whatever the locale (the port check reads them)
    with subprocess.Popen(
        list(command),
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    ) as process:
        try:
            output, _ = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            output, _ = process.communicate()
            raise PostgresError(
                f"{' '.join(command)} did not finish within {timeout:.0f} s:\n{output}"
            ) from None
    return subprocess.CompletedProcess(list(command), process.returncode, output, None)


def _check(result: subprocess.CompletedProcess[str], what: str) -> None:
    if result.returncode != 0:
        raise PostgresError(f"{what} failed ({result.returncode}):\n{result.stdout.strip()}")


def _log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as error:
        return f"(no log at {path}: {error})"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"
