"""A throwaway PostgreSQL cluster: initdb into a temp folder, listening on 127.0.0.1 only.

Debian's postgresql package provides the binaries (scripts/ensure-postgres.sh installs it). As
root, initdb refuses to run, so the cluster runs as the `postgres` system user.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from devstack.net import free_port

PG_USER = "bridge"
PG_PASSWORD = "bridge-local-only"  # noqa: S105 - throwaway local cluster


def pg_bindir() -> Path:
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if Path(candidate, "initdb").exists():
            return Path(candidate)
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    raise RuntimeError("PostgreSQL is not installed; run scripts/ensure-postgres.sh")


@dataclass
class PostgresCluster:
    base_dir: Path
    port: int = 0

    def _as_owner(self, args: list[str]) -> list[str]:
        if os.geteuid() == 0:
            return ["runuser", "-u", "postgres", "--", *args]
        return args

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    def url(self, database: str = "bridge") -> str:
        return f"postgresql+psycopg://{PG_USER}:{PG_PASSWORD}@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        bindir = pg_bindir()
        self.port = self.port or free_port()
        self.base_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.base_dir, "postgres", "postgres")
        pwfile = self.base_dir / "pw"
        pwfile.write_text(PG_PASSWORD + "\n")
        if os.geteuid() == 0:
            shutil.chown(pwfile, "postgres", "postgres")
        os.chmod(self.base_dir, 0o755)  # noqa: S103 - the postgres user must enter it

        def run(args: list[str]) -> None:
            result = subprocess.run(
                self._as_owner(args), check=False, capture_output=True, timeout=120, text=True
            )
            if result.returncode != 0:
                raise RuntimeError(f"{args[0]} failed: {result.stderr.strip()[-1500:]}")

        run(
            [
                str(bindir / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                PG_USER,
                "-A",
                "scram-sha-256",
                "--pwfile",
                str(pwfile),
                "-E",
                "UTF8",
                "--no-sync",
            ]
        )
        run(
            [
                str(bindir / "pg_ctl"),
                "-D",
                str(self.data_dir),
                "-w",
                "-t",
                "60",
                "-l",
                str(self.base_dir / "postgres.log"),
                "-o",
                f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.base_dir} "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                "-c max_connections=200",
                "start",
            ]
        )
        env = {**os.environ, "PGPASSWORD": PG_PASSWORD}
        subprocess.run(
            [
                "psql",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                PG_USER,
                "-d",
                "postgres",
                "-c",
                "CREATE DATABASE bridge",
            ],
            check=True,
            capture_output=True,
            env=env,
            timeout=60,
        )

    def create_database(self, name: str) -> str:
        env = {**os.environ, "PGPASSWORD": PG_PASSWORD}
        subprocess.run(
            [
                "psql",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                PG_USER,
                "-d",
                "postgres",
                "-c",
                f'CREATE DATABASE "{name}"',
            ],
            check=True,
            capture_output=True,
            env=env,
            timeout=60,
        )
        return self.url(name)

    def stop(self) -> None:
        if not self.data_dir.exists():
            return
        subprocess.run(
            self._as_owner(
                [str(pg_bindir() / "pg_ctl"), "-D", str(self.data_dir), "-m", "immediate", "stop"]
            ),
            check=False,
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(self.base_dir, ignore_errors=True)
