"""A loopback stand-in for the Hugging Face Hub's file-download protocol, so that tests never touch the network.

huggingface_hub 2.4.0 (``file_download.py``) fetches a file in two steps. ``HEAD /{repo}/resolve/{revision}/{file}``
must answer ``X-Repo-Commit`` (the commit the revision points to), an ETag (``X-Linked-Etag`` wins over ``ETag``;
for an LFS file it is the sha256 of the bytes, otherwise the git blob sha1) and the size (``X-Linked-Size``, else
``Content-Length``); then ``GET`` on the same URL streams the bytes. A 404 is told apart by its ``X-Error-Code``:
``RepoNotFound``, ``RevisionNotFound`` or ``EntryNotFound`` (the last one with ``X-Repo-Commit``).
"""

from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

import pytest
from huggingface_hub import close_session
from huggingface_hub import constants as hf_constants

MODES = ("ok", "error", "corrupt", "hang")


class HubServer:
    """A threaded HTTP server on 127.0.0.1 (random port) serving registered files; use it as a context manager.

    ``mode`` sets how every later request is answered: ``"ok"``; ``"error"``: HTTP 500; ``"corrupt"``: GET sends
    the right number of bytes, first one flipped, under the good file's headers; ``"hang"``: no answer for
    ``hang_s`` seconds. ``requests`` lists the ``(method, path)`` of every request received.
    """

    def __init__(self) -> None:
        self.mode = "ok"
        self.hang_s = 30.0
        self.requests: list[tuple[str, str]] = []
        self._files: dict[tuple[str, str, str], tuple[bytes, bool]] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.hub = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def add(self, repo_id: str, filename: str, data: bytes, *, revision: str = "main", lfs: bool = True) -> str:
        """Serve ``data`` as ``filename`` of ``repo_id`` at ``revision``; return its sha256."""
        self._files[(repo_id, revision, filename)] = (data, lfs)
        return hashlib.sha256(data).hexdigest()

    @staticmethod
    def commit(repo_id: str, revision: str) -> str:
        """The (made-up, stable) commit hash that ``revision`` of ``repo_id`` points to."""
        return hashlib.sha1(f"{repo_id}@{revision}".encode()).hexdigest()

    def start(self) -> HubServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the port (connections to it are then refused)."""
        self._stopping.set()  # wakes "hang" handlers
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        if not self._stopping.is_set():
            self.stop()

    def _answer(self, method: str, raw_path: str) -> tuple[int, dict[str, str], bytes] | None:
        """Status, headers and body for a request; None means "send nothing"."""
        with self._lock:
            self.requests.append((method, raw_path))
        if self.mode == "hang":
            self._stopping.wait(self.hang_s)
            return None
        if self.mode == "error":
            return 500, {"X-Error-Message": "stand-in Hub failure"}, b"Internal Error"
        # Split before unquoting: a quoted revision ("refs%2Fpr%2F1") is one path segment.
        parts = [unquote(part) for part in urlsplit(raw_path).path.strip("/").split("/")]
        if len(parts) < 5 or parts[2] != "resolve":
            return 404, {}, b"Not Found"
        repo_id, revision, filename = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
        revisions = {rev for repo, rev, _ in self._files if repo == repo_id}
        if not revisions:
            return 404, {"X-Error-Code": "RepoNotFound"}, b"Repository not found"
        named = [rev for rev in revisions if revision in (rev, self.commit(repo_id, rev))]
        if not named:
            return 404, {"X-Error-Code": "RevisionNotFound"}, b"Invalid rev id"
        commit = self.commit(repo_id, named[0])
        entry = self._files.get((repo_id, named[0], filename))
        if entry is None:
            return 404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit}, b"Entry not found"
        data, lfs = entry
        headers = {"X-Repo-Commit": commit, "Content-Type": "application/octet-stream"}
        if lfs:
            headers["X-Linked-Etag"] = f'"{hashlib.sha256(data).hexdigest()}"'
            headers["X-Linked-Size"] = str(len(data))
        headers["ETag"] = f'"{hashlib.sha1(b"blob %d" % len(data) + bytes(1) + data).hexdigest()}"'
        if self.mode == "corrupt" and method == "GET" and data:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        return 200, headers, data


class _Handler(BaseHTTPRequestHandler):
    def do_HEAD(self) -> None:
        self._reply(send_body=False)

    def do_GET(self) -> None:
        self._reply(send_body=True)

    def _reply(self, send_body: bool) -> None:
        answer = self.server.hub._answer(self.command, self.path)
        if answer is None:
            return
        status, headers, body = answer
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))  # a HEAD announces the length its GET would send
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the base class's signature)
        pass  # keep test output clean; HubServer.requests records what came in


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """A running :class:`HubServer` that huggingface_hub talks to, in this process and in child processes, with an
    empty Hugging Face cache (``tmp_path/hf``) and canon cache (``tmp_path/canon``) of the test's own.

    huggingface_hub reads HF_ENDPOINT, HF_HUB_CACHE and HF_HUB_OFFLINE once, at import, into ``constants``: those
    are patched for this process, and the environment is set for child processes.
    """
    with HubServer() as server:
        env = {
            "HF_ENDPOINT": server.url,
            "HF_HOME": str(tmp_path / "hf"),
            "HF_HUB_CACHE": str(tmp_path / "hf" / "hub"),
            "CANON_CACHE_DIR": str(tmp_path / "canon"),
            "NO_PROXY": "127.0.0.1,localhost",  # a proxy configured for the machine must not see loopback calls
            # Else the first request of a process is preceded by a telemetry GET /api/agent-harnesses (3 s timeout).
            "HF_HUB_DISABLE_TELEMETRY": "1",
        }
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_ETAG_TIMEOUT"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setattr(hf_constants, "ENDPOINT", server.url)
        monkeypatch.setattr(
            hf_constants, "HUGGINGFACE_CO_URL_TEMPLATE", server.url + "/{repo_id}/resolve/{revision}/{filename}"
        )
        monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", env["HF_HUB_CACHE"])
        monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(hf_constants, "HF_HUB_ETAG_TIMEOUT", hf_constants.DEFAULT_ETAG_TIMEOUT)
        monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_TELEMETRY", True)
        close_session()  # the shared HTTP client read the proxy settings when it was made: make a fresh one
        yield server
    close_session()
