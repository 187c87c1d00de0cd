"""A real Label Studio server for the tests: the `label-studio` package, SQLite, loopback.

Started once per test session by the ``label_studio`` fixture (conftest.py). Everything it
needs is made non-interactively: a fresh data folder (SQLite database and media), a free
port on 127.0.0.1, an admin user with a known legacy API token (LABEL_STUDIO_USERNAME,
LABEL_STUDIO_PASSWORD, LABEL_STUDIO_USER_TOKEN plus --enable-legacy-api-token: what
`label-studio start` reads on a first start), and local-files serving under a document root.
Phoning home is switched off (Sentry, version check, analytics); nothing leaves the machine.

``ALFT_TEST_LABEL_STUDIO`` may name another `label-studio` executable (e.g. one installed in
a separate environment); by default this interpreter runs ``-m label_studio.server``.

A fresh database spends most of the start (20-70 s on 2 busy cores) in Label Studio's ~300
migrations. With ``template`` (a path in pytest's cache, per Label Studio version) the first
session saves its freshly migrated database there and later sessions start from a copy
(about 6 s); a clean checkout, as in CI, builds it once.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

USER = "alft-tests@localhost"
PASSWORD = "alft-tests-password"
TOKEN = "alft0tests0token0abcdef0123456789"
START_TIMEOUT_S = 240.0


class ServerFailed(RuntimeError):
    """The server did not start; the message ends with its log tail."""


@dataclass
class LabelStudioServer:
    """A running server and how to reach it."""

    url: str
    api_key: str
    document_root: Path
    log: Path
    process: subprocess.Popen
    start_seconds: float

    def log_tail(self, lines: int = 40) -> str:
        return _tail(self.log, lines)

    def stop(self) -> None:
        """Stop the server (its whole process group), politely first."""
        if self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=15)


def _save_template(db: Path, template: Path) -> None:
    """Copy the running server's database (SQLite's online backup: consistent)."""
    template.parent.mkdir(parents=True, exist_ok=True)
    tmp = template.with_suffix(".tmp")
    with contextlib.closing(sqlite3.connect(db)) as src, \
            contextlib.closing(sqlite3.connect(tmp)) as dst:
        src.backup(dst)
    tmp.replace(template)


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(text[-lines:])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str, token: str | None = None) -> int:
    req = urllib.request.Request(url, headers={"Authorization": f"Token {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except (urllib.error.URLError, OSError):
        return 0


def server_env(document_root: Path) -> dict[str, str]:
    """The environment the test server runs with (no LABEL_STUDIO_* of the caller's)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LABEL_STUDIO_", "HEARTEX_"))}
    env.update({
        "LABEL_STUDIO_USERNAME": USER,
        "LABEL_STUDIO_PASSWORD": PASSWORD,
        "LABEL_STUDIO_USER_TOKEN": TOKEN,
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(document_root),
        "SENTRY_DSN": "",
        "FRONTEND_SENTRY_DSN": "",
        "LATEST_VERSION_CHECK": "false",
        "COLLECT_ANALYTICS": "false",
        "DEBUG": "false",
        "PYTHONUNBUFFERED": "1",
    })
    return env


def label_studio_version() -> str | None:
    """The version of the label-studio installed here (None if it is not)."""
    try:
        import label_studio
    except ImportError:
        return None
    return str(label_studio.__version__)


def start_server(workdir: Path, document_root: Path, timeout: float = START_TIMEOUT_S,
                 template: Path | None = None) -> LabelStudioServer:
    """Start Label Studio in ``workdir`` and wait until its API answers the test token.

    Raises:
        ServerFailed: If it is not installed, exits, or does not answer within ``timeout``.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    db = workdir / "data" / "label_studio.sqlite3"
    if template is not None and template.is_file():
        db.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(template, db)
    document_root = document_root.resolve()
    port = _free_port()
    exe = os.environ.get("ALFT_TEST_LABEL_STUDIO")
    if exe:
        command = [exe]
    else:
        try:
            import label_studio  # noqa: F401
        except ImportError:
            raise ServerFailed("label-studio is not installed in this environment: "
                               "pip install -e '.[dev]' (or make install)") from None
        command = [sys.executable, "-m", "label_studio.server"]
    command += ["start", "--no-browser", "--data-dir", str(workdir / "data"),
                "--internal-host", "127.0.0.1", "--port", str(port),
                "--enable-legacy-api-token"]
    log = workdir / "label-studio.log"
    started = time.perf_counter()
    with open(log, "wb") as fh:
        process = subprocess.Popen(command, cwd=workdir, env=server_env(document_root),
                                   stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    server = LabelStudioServer(f"http://127.0.0.1:{port}", TOKEN, document_root, log, process, 0.0)
    deadline = started + timeout
    while True:
        if process.poll() is not None:
            raise ServerFailed(f"Label Studio exited with code {process.returncode} while "
                               f"starting ({' '.join(command)}); log tail:\n{server.log_tail()}")
        # label-studio moves to another port if the one given is taken meanwhile.
        found = re.findall(r"Starting development server at (http://[\d.]+:\d+)/",
                           log.read_text(errors="replace"))
        if found:
            server.url = found[-1]
        if (found and _get(server.url + "/health") == 200
                and _get(server.url + "/api/current-user/whoami", TOKEN) == 200):
            break
        if time.perf_counter() > deadline:
            server.stop()
            raise ServerFailed(f"Label Studio did not answer within {timeout:.0f} s at "
                               f"{server.url}; log tail:\n{server.log_tail()}")
        time.sleep(0.25)
    server.start_seconds = time.perf_counter() - started
    if template is not None and not template.is_file() and db.is_file():
        _save_template(db, template)
    (workdir / "server.json").write_text(json.dumps(
        {"url": server.url, "start_seconds": round(server.start_seconds, 2)}))
    return server
