"""Real PostgreSQL and MariaDB servers on 127.0.0.1, from the machine's Debian packages (``postgresql``,
``mariadb-server``), where the import tests keep a coordinator's ``service_keys`` table; and FerretDB, a
MongoDB-compatible server built from the Go module proxy (``devcluster.binaries.ensure_ferretdb``), where they keep
it as a ``service_keys`` collection.

Each server gets a temp dir of its own (data, socket, log) and a free port, a database ``coordinator`` owned by a
user ``coordinator`` who logs in with a password over TCP (``url``), and is gone, dir included, at ``stop()`` or
at interpreter exit. Nothing is cached: a fresh data directory takes under a second to make, less than copying
one would save.

Both servers refuse to run as root (postgres outright, mariadbd without ``--user``). As root they run as the
system users their packages create, ``postgres`` and ``mysql``: unlike ``nobody``, which unrelated daemons share
(so they could read or write a data dir it owns), these exist for exactly this and own nothing of anyone else's.
As any other user they run as that user.
"""

from __future__ import annotations

import atexit
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import psycopg
import pymongo
import pymysql
from psycopg import sql

from devcluster.binaries import FERRETDB_VERSION, BuildError, ensure_ferretdb
from devcluster.process import ManagedProcess, StartError, free_port, log_tail

DATABASE = "coordinator"
USER = "coordinator"
POSTGRESQL_ROOT = Path("/usr/lib/postgresql")  # Debian installs each major version in <root>/<major>/bin
MARIADB_SERVER = Path("/usr/sbin/mariadbd")
MARIADB_INSTALL_DB = Path("/usr/bin/mariadb-install-db")


def _service_user(name: str, package: str) -> pwd.struct_passwd | None:
    """The system user to run a server as when we are root (None when we are not: then we run it as ourselves)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise StartError(f"no system user {name!r} to run the server as: install the Debian package {package} "
                         "(bash hack/install.sh)") from None


def _require(binary: Path, package: str) -> Path:
    # A missing server is an installation error with a known fix, never a reason to skip the tests that need it.
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        raise StartError(f"{binary} not found: install the Debian package {package} (bash hack/install.sh)")
    return binary


def newest_postgresql_bindir() -> Path:
    """The bin directory of the newest PostgreSQL major version installed (15 on Debian 12)."""
    found = sorted((path.parent for path in POSTGRESQL_ROOT.glob("*/bin/postgres")),
                   key=lambda bindir: int(bindir.parent.name) if bindir.parent.name.isdigit() else 0)
    if not found:
        raise StartError(f"no {POSTGRESQL_ROOT}/<version>/bin/postgres: install the Debian package postgresql "
                         "(bash hack/install.sh)")
    return found[-1]


class _DatabaseServer:
    """What both servers share: the temp dir, port and credentials, start/stop around ``_initialise``, ``_process``
    and ``_create_database``, which each server supplies."""

    name = ""
    scheme = ""

    def __init__(self, workdir_prefix: str) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix=workdir_prefix))
        self.port = free_port()
        # Hex, so the URL needs no escaping; new for every server, so no test can come to depend on it.
        self.password = secrets.token_hex(16)
        self.server_version = ""
        self.startup_seconds = 0.0
        self.process: ManagedProcess | None = None
        self._stopped = False

    @property
    def url(self) -> str:
        """``<scheme>://coordinator:<password>@127.0.0.1:<port>/coordinator``, what an importer is given."""
        return f"{self.scheme}://{USER}:{self.password}@127.0.0.1:{self.port}/{DATABASE}"

    @property
    def redacted_url(self) -> str:
        """``url`` without the password, for messages."""
        return f"{self.scheme}://{USER}:***@127.0.0.1:{self.port}/{DATABASE}"

    @property
    def log_path(self) -> Path:
        """The server's own log (stdout and stderr)."""
        return self.workdir / f"{self.name}.log"

    def _initialise(self) -> None:
        raise NotImplementedError

    def _process(self) -> ManagedProcess:
        raise NotImplementedError

    def _answers(self) -> bool:
        raise NotImplementedError

    def _create_database(self) -> None:
        raise NotImplementedError

    def _chown(self, path: Path, user: pwd.struct_passwd | None) -> None:
        if user is not None:
            os.chown(path, user.pw_uid, user.pw_gid)

    def start(self) -> Self:
        """Make the data dir, start the server, wait until it answers, create the database and its user."""
        atexit.register(self.stop)
        started = time.monotonic()
        try:
            self._initialise()
            initialised = time.monotonic() - started
            self.process = self._process()
            self.process.start()
            self.process.wait_ready(self._answers, timeout_seconds=60)
            try:
                self._create_database()
            except Exception as failed:  # a driver error alone would not say what the server logged
                raise StartError(f"{self.name}: creating database {DATABASE!r} and user {USER!r} failed: {failed}; "
                                 f"log {self.log_path}:\n{log_tail(self.log_path)}") from failed
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        print(f"[devcluster] {self.server_version} at {self.redacted_url} started in {self.startup_seconds:.1f}s "
              f"(data dir made in {initialised:.1f}s; workdir {self.workdir})", file=sys.stderr, flush=True)
        return self

    def _run_setup(self, what: str, argv: list[str], log: Path) -> None:
        """Run a one-off setup command (initdb, mariadb-install-db), its output kept in ``log``."""
        with open(log, "wb") as output:
            result = subprocess.run(argv, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}, timeout=120)
        if result.returncode != 0:
            raise StartError(f"{what} exited with code {result.returncode}; log {log}:\n{log_tail(log)}")

    def _terminate(self) -> None:
        if self.process is not None:
            self.process.stop()

    def stop(self) -> None:
        """Stop the server and remove its temp dir, data and log included (idempotent)."""
        if self._stopped:
            return
        self._stopped = True
        started = time.monotonic()
        try:
            self._terminate()
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)
        if self.process is not None:
            print(f"[devcluster] {self.name} stopped and removed in {time.monotonic() - started:.1f}s",
                  file=sys.stderr, flush=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()


class PostgreSQLServer(_DatabaseServer):
    """``postgres`` on 127.0.0.1 with a fresh ``initdb`` cluster in its temp dir.

    The superuser ``postgres`` has no password and is reached only through the Unix socket in the private temp
    dir (trust); ``coordinator`` logs in over TCP with SCRAM, as an application would.
    """

    name = "postgresql"
    scheme = "postgresql"

    def __init__(self, bindir: Path | None = None) -> None:
        self.bindir = bindir or newest_postgresql_bindir()
        _require(self.bindir / "postgres", "postgresql")
        _require(self.bindir / "initdb", "postgresql")
        self.run_as = _service_user("postgres", "postgresql")
        super().__init__("servicekey-postgresql-")
        self.data_dir = self.workdir / "data"

    def _as_server_user(self, argv: list[str]) -> list[str]:
        # setpriv execs the command itself (no intermediate process, unlike su or runuser), so stopping the
        # process we started stops postgres.
        if self.run_as is None:
            return argv
        return ["/usr/bin/setpriv", f"--reuid={self.run_as.pw_uid}", f"--regid={self.run_as.pw_gid}",
                "--init-groups", "--", *argv]

    def _initialise(self) -> None:
        # The server user must own the dir: the data dir, the socket and postmaster's lock file go in it.
        self._chown(self.workdir, self.run_as)
        self._run_setup("initdb", self._as_server_user([
            str(self.bindir / "initdb"), f"--pgdata={self.data_dir}", "--username=postgres",
            "--auth-local=trust", "--auth-host=scram-sha-256",
            # The C locale and UTF-8 whatever the machine's locale is; --no-sync: the data is thrown away.
            "--no-locale", "--encoding=UTF8", "--no-sync",
        ]), self.workdir / "initdb.log")

    def _process(self) -> ManagedProcess:
        argv = self._as_server_user([
            str(self.bindir / "postgres"), "-D", str(self.data_dir), "-p", str(self.port),
            "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.workdir}",
            # Durability buys nothing for a table that lives as long as the test session.
            "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
            # Gentle on a shared 2-core CI machine: an importer and a test need a handful of connections.
            "-c", "shared_buffers=32MB", "-c", "max_connections=40",
        ])
        return ManagedProcess("postgresql", argv, self.log_path, env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"})

    def _admin(self, dbname: str = "postgres") -> psycopg.Connection[Any]:
        return psycopg.connect(host=str(self.workdir), port=self.port, user="postgres", dbname=dbname,
                               connect_timeout=5, autocommit=True)

    def _answers(self) -> bool:
        with self._admin() as connection:
            return connection.execute("SELECT 1").fetchone() == (1,)

    def _create_database(self) -> None:
        with self._admin() as connection:
            # DDL takes no bind parameters: the password goes in as a quoted literal.
            connection.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(USER), sql.Literal(self.password)))
            connection.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(DATABASE), sql.Identifier(USER)))
            row = connection.execute("SHOW server_version").fetchone()
        self.server_version = f"PostgreSQL {row[0] if row else '?'}"

    def _terminate(self) -> None:
        if self.process is not None and self.process.running() and self.process.pid:
            # SIGTERM is postgres's "smart" shutdown, which waits for every client to disconnect (a test that
            # left a connection open would cost the whole grace period); SIGINT is "fast": it disconnects them.
            os.kill(self.process.pid, signal.SIGINT)
        super()._terminate()


class MariaDBServer(_DatabaseServer):
    """``mariadbd`` on 127.0.0.1 with a fresh ``mariadb-install-db`` data dir in its temp dir.

    ``root`` has no password and is reached only through the Unix socket in the private temp dir;
    ``coordinator`` logs in over TCP with a password (mysql_native_password), as an application would.
    """

    name = "mariadb"
    scheme = "mysql"

    def __init__(self, server: Path = MARIADB_SERVER, install_db: Path = MARIADB_INSTALL_DB) -> None:
        self.server = _require(server, "mariadb-server")
        self.install_db = _require(install_db, "mariadb-server")
        self.run_as = _service_user("mysql", "mariadb-server")
        super().__init__("servicekey-mariadb-")
        self.data_dir = self.workdir / "data"
        self.socket = self.workdir / "mariadbd.sock"

    def _options(self) -> list[str]:
        # --no-defaults (first, or it is ignored): /etc/mysql's my.cnf would move the socket to /run/mysqld and
        # bring the machine's settings. --user makes mariadbd drop root itself; without root it is not allowed.
        options = ["--no-defaults", f"--datadir={self.data_dir}"]
        if self.run_as is not None:
            options.append(f"--user={self.run_as.pw_name}")
        return [*options,
                # Small redo log and buffer pool: 100 MB of ib_logfile0 per server would be most of the start time.
                "--innodb-log-file-size=8M", "--innodb-buffer-pool-size=32M",
                # io_uring/libaio are refused by some container seccomp profiles; threads work everywhere.
                "--innodb-use-native-aio=OFF"]

    def _initialise(self) -> None:
        self._chown(self.workdir, self.run_as)
        self._run_setup("mariadb-install-db", [
            str(self.install_db), *self._options(),
            # root with an empty password instead of unix_socket auth, which maps the OS user to a database user
            # and so would fail for a developer who is not root; the socket is in the private temp dir.
            "--auth-root-authentication-method=normal", "--skip-test-db", "--skip-name-resolve",
        ], self.workdir / "mariadb-install-db.log")

    def _process(self) -> ManagedProcess:
        argv = [str(self.server), *self._options(),
                "--bind-address=127.0.0.1", f"--port={self.port}", f"--socket={self.socket}",
                f"--pid-file={self.workdir / 'mariadbd.pid'}", f"--tmpdir={self.workdir}",
                "--skip-name-resolve",
                # What Debian's own configuration sets (the compiled-in default is latin1), as a coordinator has it.
                "--character-set-server=utf8mb4", "--collation-server=utf8mb4_general_ci",
                # Durability buys nothing for a table that lives as long as the test session.
                "--innodb-flush-log-at-trx-commit=0", "--sync-binlog=0", "--performance-schema=OFF"]
        return ManagedProcess("mariadb", argv, self.log_path, env={"PATH": "/usr/sbin:/usr/bin:/bin", "LC_ALL": "C"})

    def _admin(self) -> pymysql.Connection:
        return pymysql.connect(unix_socket=str(self.socket), user="root", password="", connect_timeout=5,
                               autocommit=True)

    def _answers(self) -> bool:
        with self._admin() as connection, connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            return cursor.fetchone() == (1,)

    def _create_database(self) -> None:
        with self._admin() as connection, connection.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE `{DATABASE}` CHARACTER SET utf8mb4")
            # '%': any client host. The server listens on 127.0.0.1 only, which is the real restriction.
            # With arguments PyMySQL %-formats the statement, so the host pattern's '%' is written '%%'.
            cursor.execute(f"CREATE USER '{USER}'@'%%' IDENTIFIED BY %s", (self.password,))
            cursor.execute(f"GRANT ALL PRIVILEGES ON `{DATABASE}`.* TO '{USER}'@'%'")
            cursor.execute("SELECT VERSION()")
            row = cursor.fetchone()
        self.server_version = f"MariaDB {row[0] if row else '?'}"


class FerretDBServer(_DatabaseServer):
    """FerretDB (``ensure_ferretdb``, built once from the Go module proxy) on 127.0.0.1 with its SQLite backend: a
    MongoDB-compatible server whose data is a directory of SQLite files in its temp dir, nothing else to run.

    No authentication: FerretDB v1 with SQLite checks no credentials (it refuses SCRAM, pymongo's default, unless
    the experimental ``--test-enable-new-auth`` is on), so ``url`` is ``mongodb://127.0.0.1:<port>/coordinator``.
    The database needs no creating either: MongoDB makes it at the first insert. It runs as whoever runs the tests:
    unlike postgres and mariadbd it does not refuse root, and its only files are in the private temp dir.
    """

    name = "ferretdb"
    scheme = "mongodb"

    def __init__(self, binary: Path | None = None) -> None:
        if binary is None:
            try:
                binary = ensure_ferretdb()
            except BuildError as failed:
                raise StartError(f"ferretdb {FERRETDB_VERSION} could not be built: {failed}") from failed
        if not (binary.is_file() and os.access(binary, os.X_OK)):
            raise StartError(f"{binary} not found: build it with python3 -m devcluster build (bash hack/install.sh)")
        self.binary = binary
        super().__init__("servicekey-ferretdb-")
        self.data_dir = self.workdir / "data"

    @property
    def url(self) -> str:
        """``mongodb://127.0.0.1:<port>/coordinator``, what an importer is given (no credentials: see above)."""
        return f"{self.scheme}://127.0.0.1:{self.port}/{DATABASE}"

    @property
    def redacted_url(self) -> str:
        """``url``: it holds no password."""
        return self.url

    def _initialise(self) -> None:
        self.data_dir.mkdir()

    def _process(self) -> ManagedProcess:
        argv = [str(self.binary), "--handler=sqlite", f"--sqlite-url=file:{self.data_dir}/",
                f"--listen-addr=127.0.0.1:{self.port}", f"--state-dir={self.workdir}",
                # No HTTP debug listener (its default, 127.0.0.1:8088, would clash between two servers), and no
                # telemetry report to beacon.ferretdb.com. Errors only: at warn it logs every error reply in full
                # (pymongo's endSessions, which FerretDB lacks, makes one per client); start failures are fatal.
                "--debug-addr=-", "--telemetry=disable", "--log-level=error"]
        return ManagedProcess("ferretdb", argv, self.log_path, env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"},
                              cwd=self.workdir)

    def _client(self) -> pymongo.MongoClient[dict[str, Any]]:
        return pymongo.MongoClient(self.url, serverSelectionTimeoutMS=2000, connectTimeoutMS=2000)

    def _answers(self) -> bool:
        with self._client() as client:
            return client.admin.command("ping").get("ok") == 1

    def _create_database(self) -> None:
        with self._client() as client:
            info = client.admin.command("buildInfo")
        self.server_version = (f"FerretDB {info.get('ferretdbVersion', FERRETDB_VERSION)} (SQLite backend, MongoDB "
                               f"{info.get('version', '?')} wire protocol)")
