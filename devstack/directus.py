"""A real Directus for tests, `make dev` and benchmarks.

Installs the pinned Directus from npm into a cache folder outside git (scripts/install-directus.sh,
reused when present), bootstraps it on SQLite with an admin static token, starts it on a free
127.0.0.1 port, waits for `/server/ping`, and stops it by PID.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from devstack.net import free_port, wait_until

REPO = Path(__file__).resolve().parent.parent
INSTALL_SCRIPT = REPO / "scripts" / "install-directus.sh"
DIRECTUS_VERSION = "11.3.5"
ADMIN_EMAIL = "admin@example.com"
ADMIN_PASSWORD = "admin-password-for-local-only"  # noqa: S105 - local test server only
ADMIN_TOKEN = "local-admin-static-token-0123456789"  # noqa: S105 - local test server only


# The repo's Directus extension (the `ridendine` endpoint, the "refund-bridge-mail" operation of
# the "refund result" Flow), as it is named in an extensions folder.
EXTENSION_DIR = REPO / "directus-extension"
EXTENSION_LINK = "directus-extension-ridendine"


def link_extension(extensions_dir: Path) -> None:
    """The repo's extension, linked (not copied) into Directus's extensions folder."""
    extensions_dir.mkdir(parents=True, exist_ok=True)
    link = extensions_dir / EXTENSION_LINK
    if link.is_symlink() and link.resolve() == EXTENSION_DIR.resolve():
        return
    if link.is_symlink() or link.is_file():
        link.unlink()
    elif link.exists():
        raise FileExistsError(f"{link} is a folder; remove it to link the repo's extension")
    link.symlink_to(EXTENSION_DIR)


def install_directus() -> Path:
    """The folder with node_modules/directus, installing it first when missing."""
    result = subprocess.run(
        ["bash", str(INSTALL_SCRIPT)],
        check=False,
        stdout=subprocess.PIPE,
        env={**os.environ, "DIRECTUS_VERSION": DIRECTUS_VERSION},
        text=True,
        timeout=1200,
    )
    if result.returncode != 0:
        raise RuntimeError("installing Directus failed; see the output above")
    return Path(result.stdout.strip().splitlines()[-1])


@dataclass
class DirectusServer:
    """One Directus process on SQLite in `data_dir`."""

    data_dir: Path
    port: int = 0
    smtp_port: int | None = None
    extensions_dir: Path | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    install_dir: Path | None = None
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_token(self) -> str:
        return ADMIN_TOKEN

    def env(self) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/root"),
            "NODE_ENV": "production",
            "TELEMETRY": "false",
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "PUBLIC_URL": self.url,
            "KEY": "refund-bridge-local-key-0123456789abcdef",
            "SECRET": "refund-bridge-local-secret-0123456789abcdef",
            "DB_CLIENT": "sqlite3",
            "DB_FILENAME": str(self.data_dir / "directus.sqlite3"),
            "ADMIN_EMAIL": ADMIN_EMAIL,
            "ADMIN_PASSWORD": ADMIN_PASSWORD,
            "ADMIN_TOKEN": ADMIN_TOKEN,
            "STORAGE_LOCATIONS": "local",
            "STORAGE_LOCAL_ROOT": str(self.data_dir / "uploads"),
            "EXTENSIONS_PATH": str(self.extensions_dir or (self.data_dir / "extensions")),
            "EXTENSIONS_AUTO_RELOAD": "false",
            "CACHE_ENABLED": "false",
            "RATE_LIMITER_ENABLED": "false",
            "PRESSURE_LIMITER_ENABLED": "false",
            "WEBSOCKETS_ENABLED": "false",
            "LOG_LEVEL": "warn",
            "LOG_STYLE": "raw",
            "EMAIL_FROM": "no-reply@example.com",
            "EMAIL_VERIFY_SETUP": "false",
            "FLOWS_ENV_ALLOW_LIST": "REFUND_BRIDGE_*",
        }
        if self.smtp_port:
            env.update(
                EMAIL_TRANSPORT="smtp",
                EMAIL_SMTP_HOST="127.0.0.1",
                EMAIL_SMTP_PORT=str(self.smtp_port),
                EMAIL_SMTP_SECURE="false",
                EMAIL_SMTP_IGNORE_TLS="true",
            )
        env.update(self.extra_env)
        return env

    def _run_js(self) -> list[str]:
        assert self.install_dir is not None
        return ["node", str(self.install_dir / "node_modules/@directus/api/dist/cli/run.js")]

    def bootstrap(self) -> None:
        """Create the database, the admin and its static token (about 5 s)."""
        self.install_dir = self.install_dir or install_directus()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "uploads").mkdir(exist_ok=True)
        if self.extensions_dir is None:
            (self.data_dir / "extensions").mkdir(exist_ok=True)
        if not self.port:
            self.port = free_port()
        with open(self.data_dir / "bootstrap.log", "wb") as log:
            result = subprocess.run(
                [*self._run_js(), "bootstrap"],
                cwd=self.install_dir,
                env=self.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=180,
                check=False,
            )
        if result.returncode != 0:
            tail = (self.data_dir / "bootstrap.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"Directus bootstrap failed:\n{tail}")

    def start(self, timeout: float = 60.0) -> None:
        """Start the server and wait until `/server/ping` answers `pong`."""
        if self.install_dir is None or not (self.data_dir / "directus.sqlite3").exists():
            self.bootstrap()
        self.log_path = self.data_dir / "directus.log"
        log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the process's life
        self.process = subprocess.Popen(
            [*self._run_js(), "start"],
            cwd=self.install_dir,
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

        def ready() -> bool:
            if self.process is not None and self.process.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-2000:] if self.log_path else ""
                raise RuntimeError(f"Directus exited with {self.process.returncode}:\n{tail}")
            try:
                return requests.get(f"{self.url}/server/ping", timeout=1).text == "pong"
            except requests.RequestException:
                return False

        wait_until(ready, timeout=timeout, interval=0.2, what="Directus to answer /server/ping")

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the server by PID (SIGTERM, then SIGKILL)."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)

    def restart(self) -> None:
        self.stop()
        self.start()

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)


def wait_for_port_closed(port: int, timeout: float = 10.0) -> None:
    import socket

    def closed() -> bool:
        with socket.socket() as sock:
            sock.settimeout(0.2)
            return sock.connect_ex(("127.0.0.1", port)) != 0

    wait_until(closed, timeout=timeout, interval=0.1, what=f"port {port} to close")
    time.sleep(0)
