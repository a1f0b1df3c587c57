"""A throwaway PostgreSQL cluster for tests: Debian's ``postgresql`` package (initdb + pg_ctl), a
private data folder and Unix socket, trust authentication, stopped and deleted afterwards.

initdb refuses to run as root (tests run as root in CI), so as root the server runs as ``nobody``
(``runuser``); as any other user it runs as that user. No TCP port is opened: clients connect on the
socket folder, ``postgresql+psycopg://postgres@/DB?host=FOLDER``.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

INSTALL_HINT = "install Debian's postgresql package (apt-get install postgresql), as the README's test command does"


def find_bin(name: str) -> str:
    """``name`` (initdb, pg_ctl) from PATH or Debian's /usr/lib/postgresql/<version>/bin, newest first."""
    found = shutil.which(name)
    if found:
        return found
    for path in sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                       key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0, reverse=True):
        return path
    raise RuntimeError(f"PostgreSQL's {name} is not installed: {INSTALL_HINT}")


class Cluster:
    """``with Cluster() as pg: url = pg.new_database()``."""

    def __init__(self) -> None:
        self.initdb, self.pg_ctl = find_bin("initdb"), find_bin("pg_ctl")
        self.root = Path(tempfile.mkdtemp(prefix="tracker-pg-"))
        self.data, self.socket = self.root / "data", self.root / "sock"
        self.user = "nobody" if os.geteuid() == 0 else None

    def _cmd(self, *args: str) -> list[str]:
        return ["runuser", "-u", self.user, "--", *args] if self.user else list(args)

    def start(self) -> "Cluster":
        self.socket.mkdir()
        if self.user:
            pw = pwd.getpwnam(self.user)
            for p in (self.root, self.socket):
                os.chown(p, pw.pw_uid, pw.pw_gid)
        subprocess.run(self._cmd(self.initdb, "-D", str(self.data), "-U", "postgres", "--auth=trust",
                                 "-E", "UTF8", "--no-sync"),
                       check=True, capture_output=True, text=True)
        opts = f"-c listen_addresses='' -c unix_socket_directories={self.socket} -c fsync=off -c max_connections=200"
        subprocess.run(self._cmd(self.pg_ctl, "-D", str(self.data), "-o", opts, "-l", str(self.root / "log"),
                                 "-w", "-t", "60", "start"), check=True, capture_output=True, text=True)
        return self

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@/{database}?host={self.socket}"

    def new_database(self) -> str:
        """A fresh empty database on the cluster; returns its SQLAlchemy URL."""
        import sqlalchemy as sa

        name = "t_" + uuid.uuid4().hex[:12]
        engine = sa.create_engine(self.url(), isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        finally:
            engine.dispose()
        return self.url(name)

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            subprocess.run(self._cmd(self.pg_ctl, "-D", str(self.data), "-m", "immediate", "-w", "stop"),
                           capture_output=True, text=True)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "Cluster":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
