"""A loopback stand-in for the Hugging Face Hub's file-download and upload protocols, so that tests never touch the
network.

Download. huggingface_hub 2.4.0 (``file_download.py``) fetches a file in two steps.
``HEAD /{repo}/resolve/{revision}/{file}`` must answer ``X-Repo-Commit`` (the commit the revision points to), an ETag
(``X-Linked-Etag`` wins over ``ETag``; for an LFS file it is the sha256 of the bytes, otherwise the git blob sha1) and
the size (``X-Linked-Size``, else ``Content-Length``); then ``GET`` on the same URL streams the bytes. A 404 is told
apart by its ``X-Error-Code``: ``RepoNotFound``, ``RevisionNotFound`` or ``EntryNotFound`` (the last one with
``X-Repo-Commit``).

Upload. ``HfApi.create_repo`` and ``HfApi.upload_folder`` (``hf_api.py``, ``_upload_pipeline.py``,
``_commit_api.py``) use, with ``Authorization: Bearer <token>``:

- ``POST /api/repos/create`` with JSON ``{"name", "organization", "type", "visibility"?}``: 200 ``{"url"}``, or 409
  when the repo exists (``exist_ok=True`` accepts that). On 401/403 with ``exist_ok`` the client asks
  ``GET /api/models/{repo}[/revision/{rev}]`` (model info: ``{"id", "sha", "private", "siblings"}``) whether the repo
  is there anyway.
- ``POST /api/validate-yaml`` with ``{"content", "repoType"}`` when a README.md is uploaded: the YAML front matter
  is parsed; ``{"errors": [], "warnings": []}``, or 400 with ``errors``.
- ``POST /api/models/{repo}/preupload/{revision}`` with ``{"files": [{"path", "sample" (base64 of the first 512
  bytes), "size"}]}``: ``{"files": [{"path", "uploadMode", "shouldIgnore", "oid"}]}``. This stand-in answers
  ``"regular"`` for every file, which huggingface_hub accepts whatever the size: the bytes then travel inside the
  commit and no LFS or Xet transfer takes place. ``oid`` is the git blob sha1 of the file already at that path, so
  that the client leaves unchanged files out of the commit, as it does with the Hub.
- ``POST /api/models/{repo}/commit/{revision}``, ``Content-Type: application/x-ndjson``: a ``header`` line
  (``{"summary", "description", "parentCommit"?}``), then ``file`` lines (``{"path", "content", "encoding":
  "base64"}``), ``deletedFile`` / ``deletedFolder`` lines (``{"path"}``); ``lfsFile`` lines are refused, since no LFS
  object was ever offered. Answer ``{"success", "commitOid", "commitUrl", "hookOutput"}``; the revision (a branch)
  then points to the new commit, and both the branch and the commit sha serve the committed files through ``resolve``.

Write endpoints need a token in :attr:`HubServer.tokens`: none is a 401 ``{"error": ...}``, an unknown one a 401 with
``X-Error-Message: Invalid credentials in Authorization header``, as on the Hub. Only model repos are served.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import yaml
from huggingface_hub import close_session
from huggingface_hub import constants as hf_constants

MODES = ("ok", "error", "corrupt", "hang", "trickle")
TOKEN = "hf_loopbackStandInWriteToken"  # the one token the stand-in accepts unless told otherwise
USER = "loopback-user"  # the account that token belongs to

Answer = tuple[int, dict[str, str], bytes]


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob holding ``data`` (what the Hub reports as a regular file's oid and ETag)."""
    return hashlib.sha1(b"blob %d" % len(data) + bytes(1) + data).hexdigest()


class _Refusal(Exception):
    """An HTTP error answer, raised from deep inside request handling."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, dict(headers or {})

    def answer(self) -> Answer:
        headers = {"Content-Type": "application/json", **self.headers}
        if self.code:
            headers["X-Error-Code"] = self.code
        return self.status, headers, json.dumps({"error": self.message}).encode()


class HubServer:
    """A threaded HTTP server on 127.0.0.1 (random port) serving registered files; use it as a context manager.

    ``mode`` sets how every later request is answered: ``"ok"``; ``"error"``: HTTP 500; ``"corrupt"``: GET sends
    the right number of bytes, first one flipped, under the good file's headers; ``"hang"``: no answer for
    ``hang_s`` seconds; ``"trickle"``: a file's GET sends its headers at once, then one byte every ``trickle_s``
    seconds (a pace that never trips a per-read timeout) until the server stops. ``requests`` lists the ``(method, path)`` of every request received; ``commits`` every
    commit accepted through the API, as dicts ``{"repo_id", "revision", "oid", "parent", "summary",
    "description", "files" (path -> bytes), "deleted" (paths)}``; ``repos`` the repos created through the API
    (repo id -> ``{"private": bool}``). ``tokens`` are the tokens that may write.
    """

    def __init__(self) -> None:
        self.mode = "ok"
        self.hang_s = 30.0
        self.trickle_s = 0.5
        self.requests: list[tuple[str, str]] = []
        self.commits: list[dict] = []
        self.repos: dict[str, dict] = {}
        self.tokens: set[str] = {TOKEN}
        self._files: dict[tuple[str, str, str], tuple[bytes, bool]] = {}
        self._heads: dict[tuple[str, str], str] = {}  # (repo, branch) -> commit made through the API
        self._snapshots: set[tuple[str, str]] = set()  # (repo, commit sha) stored as a revision of its own
        self._lock = threading.RLock()
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
        with self._lock:
            self._files[(repo_id, revision, filename)] = (data, lfs)
        return hashlib.sha256(data).hexdigest()

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """The files ``revision`` (a branch or a commit sha) of ``repo_id`` serves, path -> bytes."""
        with self._lock:
            found = self._find_revision(repo_id, revision)
            if found is None:
                raise KeyError(f"{repo_id} has no revision {revision!r}")
            return {name: data for name, (data, _) in self._tree(repo_id, found[0]).items()}

    @staticmethod
    def commit(repo_id: str, revision: str) -> str:
        """The (made-up, stable) commit hash that ``revision`` of ``repo_id`` points to, for files given to
        :meth:`add`; a branch committed to through the API points to its latest commit instead (:meth:`head`)."""
        return hashlib.sha1(f"{repo_id}@{revision}".encode()).hexdigest()

    def head(self, repo_id: str, revision: str) -> str:
        """The commit sha that ``revision`` (a branch, or a commit sha kept as a snapshot) of ``repo_id`` is at."""
        with self._lock:
            if (repo_id, revision) in self._heads:
                return self._heads[(repo_id, revision)]
            if (repo_id, revision) in self._snapshots:
                return revision
            return self.commit(repo_id, revision)

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

    # --- repository state (callers hold self._lock) -------------------------------------------------------------

    def _exists(self, repo_id: str) -> bool:
        return repo_id in self.repos or any(repo == repo_id for repo, _, _ in self._files)

    def _revisions(self, repo_id: str) -> set[str]:
        return ({rev for repo, rev, _ in self._files if repo == repo_id}
                | {rev for repo, rev in [*self._heads, *self._snapshots] if repo == repo_id})

    def _find_revision(self, repo_id: str, revision: str) -> tuple[str, str] | None:
        """``(stored revision, commit sha)`` that ``revision`` (a name or a commit sha) means, or None."""
        for rev in sorted(self._revisions(repo_id)):  # sorted: the same answer on every call
            sha = self.head(repo_id, rev)
            if revision in (rev, sha):
                return rev, sha
        return None

    def _tree(self, repo_id: str, rev: str) -> dict[str, tuple[bytes, bool]]:
        return {name: entry for (repo, r, name), entry in self._files.items() if repo == repo_id and r == rev}

    def _store(self, repo_id: str, branch: str, sha: str, tree: dict[str, tuple[bytes, bool]]) -> None:
        """Point ``branch`` at commit ``sha`` holding ``tree``; the commit stays resolvable by its sha."""
        for key in [key for key in self._files if key[0] == repo_id and key[1] == branch]:
            del self._files[key]
        for name, entry in tree.items():
            self._files[(repo_id, branch, name)] = entry
            self._files[(repo_id, sha, name)] = entry
        self._heads[(repo_id, branch)] = sha
        self._snapshots.add((repo_id, sha))

    # --- requests -------------------------------------------------------------------------------------------------

    def _answer(self, method: str, raw_path: str, headers=None, body: bytes = b"") -> Answer | None:
        """Status, headers and body for a request; None means "send nothing"."""
        with self._lock:
            self.requests.append((method, raw_path))
        if self.mode == "hang":
            self._stopping.wait(self.hang_s)
            return None
        if self.mode == "error":
            return 500, {"X-Error-Message": "stand-in Hub failure"}, b"Internal Error"
        # Split before unquoting: a quoted revision ("refs%2Fpr%2F1") is one path segment.
        url = urlsplit(raw_path)
        parts = [unquote(part) for part in url.path.strip("/").split("/")]
        try:
            if parts[0] == "api":
                with self._lock:
                    return self._api(method, parts[1:], parse_qs(url.query), headers or {}, body)
            return self._resolve(method, parts, headers or {})
        except _Refusal as refusal:
            return refusal.answer()

    def _resolve(self, method: str, parts: list[str], headers) -> Answer:
        if method not in ("GET", "HEAD") or len(parts) < 5 or parts[2] != "resolve":
            return 404, {}, b"Not Found"
        repo_id, revision, filename = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
        with self._lock:
            if not self._exists(repo_id) or not self._may_read(repo_id, headers):
                return 404, {"X-Error-Code": "RepoNotFound"}, b"Repository not found"
            found = self._find_revision(repo_id, revision)
            if found is None:
                return 404, {"X-Error-Code": "RevisionNotFound"}, b"Invalid rev id"
            rev, commit = found
            entry = self._files.get((repo_id, rev, filename))
        if entry is None:
            return 404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit}, b"Entry not found"
        data, lfs = entry
        answer_headers = {"X-Repo-Commit": commit, "Content-Type": "application/octet-stream"}
        if lfs:
            answer_headers["X-Linked-Etag"] = f'"{hashlib.sha256(data).hexdigest()}"'
            answer_headers["X-Linked-Size"] = str(len(data))
        answer_headers["ETag"] = f'"{git_blob_sha1(data)}"'
        if self.mode == "corrupt" and method == "GET" and data:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        return 200, answer_headers, data

    # --- the API (callers hold self._lock) ------------------------------------------------------------------------

    def _token(self, headers) -> str | None:
        scheme, _, token = (headers.get("Authorization") or "").partition(" ")
        return token.strip() if scheme.lower() == "bearer" and token.strip() else None

    def _require_writer(self, headers) -> None:
        token = self._token(headers)
        if token is None:
            raise _Refusal(401, "You must be authenticated to access this API: pass a token (Authorization: Bearer)")
        if token not in self.tokens:
            message = "Invalid credentials in Authorization header"  # huggingface_hub reads this header as is
            raise _Refusal(401, message, headers={"X-Error-Message": message})

    def _may_read(self, repo_id: str, headers) -> bool:
        return not self.repos.get(repo_id, {}).get("private") or self._token(headers) in self.tokens

    def _api(self, method: str, parts: list[str], query: dict, headers, body: bytes) -> Answer:
        route = (method, *parts[:1])
        if route == ("GET", "whoami-v2"):
            self._require_writer(headers)
            return _json(200, {"type": "user", "name": USER, "auth": {"type": "access_token",
                                                                    "accessToken": {"role": "write"}}})
        if route == ("POST", "repos") and parts[1:] == ["create"]:
            self._require_writer(headers)
            return self._create_repo(_json_body(body))
        if route == ("POST", "validate-yaml") and len(parts) == 1:
            return self._validate_yaml(_json_body(body))
        if len(parts) < 3 or parts[0] not in ("models", "datasets", "spaces"):
            raise _Refusal(404, f"no such API route /api/{'/'.join(parts)}")
        if parts[0] != "models":
            raise _Refusal(404, "the stand-in serves model repos only", code="RepoNotFound")
        repo_id, rest = "/".join(parts[1:3]), parts[3:]
        if method == "GET" and (rest == [] or (len(rest) == 2 and rest[0] == "revision")):
            return self._model_info(repo_id, rest[1] if rest else "main", headers)
        if method == "POST" and len(rest) == 2 and rest[0] in ("preupload", "commit"):
            self._require_writer(headers)
            if query.get("create_pr"):
                raise _Refusal(400, "the stand-in does not open pull requests (create_pr)")
            if not self._exists(repo_id):
                raise _Refusal(404, f"Repository {repo_id} not found", code="RepoNotFound")
            if rest[1] not in self._revisions(repo_id) or (repo_id, rest[1]) in self._snapshots:
                raise _Refusal(404, f"Invalid rev id: {rest[1]} (commits go to a branch)", code="RevisionNotFound")
            if rest[0] == "preupload":
                return self._preupload(repo_id, rest[1], _json_body(body))
            if (headers.get("Content-Type") or "").split(";")[0].strip() != "application/x-ndjson":
                raise _Refusal(400, "a commit is sent as application/x-ndjson")
            return self._commit(repo_id, rest[1], body)
        raise _Refusal(404, f"no such API route /api/{'/'.join(parts)}")

    def _create_repo(self, payload: dict) -> Answer:
        name, organization = payload.get("name"), payload.get("organization")
        repo_type = payload.get("type") or "model"
        visibility = payload.get("visibility", "public")
        if not _valid_name(name) or not (organization is None or _valid_name(organization)):
            raise _Refusal(400, f"invalid repo name {organization}/{name}")
        if repo_type != "model":
            raise _Refusal(400, f"the stand-in creates model repos only, not {repo_type!r}")
        if visibility not in ("public", "private"):
            raise _Refusal(400, f"invalid visibility {visibility!r}")
        repo_id = f"{organization or USER}/{name}"
        if self._exists(repo_id):
            return _json(409, {"error": "You already created this model repo", "url": f"{self.url}/{repo_id}"})
        self.repos[repo_id] = {"private": visibility == "private"}
        self._store(repo_id, "main", hashlib.sha1(f"initial commit of {repo_id}".encode()).hexdigest(), {})
        return _json(200, {"url": f"{self.url}/{repo_id}", "name": repo_id, "id": repo_id})

    @staticmethod
    def _validate_yaml(payload: dict) -> Answer:
        content = payload.get("content")
        if not isinstance(content, str):
            raise _Refusal(400, "validate-yaml takes {'content': str, 'repoType': str}")
        lines = content.splitlines()
        if not lines or lines[0].strip() != "---" or "---" not in [line.strip() for line in lines[1:]]:
            return _json(200, {"errors": [], "warnings": [{"message": "empty or missing yaml metadata in repo card"}]})
        end = 1 + [line.strip() for line in lines[1:]].index("---")
        try:
            metadata = yaml.safe_load("\n".join(lines[1:end]))
        except yaml.YAMLError as error:
            return _json(400, {"errors": [{"message": f"invalid YAML in the card's metadata: {error}"}]})
        if metadata is not None and not isinstance(metadata, dict):
            return _json(400, {"errors": [{"message": "the card's metadata must be a YAML mapping"}]})
        return _json(200, {"errors": [], "warnings": []})

    def _model_info(self, repo_id: str, revision: str, headers) -> Answer:
        if not self._exists(repo_id) or not self._may_read(repo_id, headers):
            raise _Refusal(404, "Repository not found", code="RepoNotFound")
        found = self._find_revision(repo_id, revision)
        if found is None:
            raise _Refusal(404, f"Invalid rev id: {revision}", code="RevisionNotFound")
        rev, sha = found
        siblings = [{"rfilename": name} for name in sorted(self._tree(repo_id, rev))]
        return _json(200, {"id": repo_id, "modelId": repo_id, "sha": sha,
                           "private": self.repos.get(repo_id, {}).get("private", False), "siblings": siblings})

    def _preupload(self, repo_id: str, branch: str, payload: dict) -> Answer:
        files = payload.get("files")
        if not isinstance(files, list) or not files:
            raise _Refusal(400, "preupload takes {'files': [{'path', 'sample', 'size'}, ...]}")
        if "gitIgnore" in payload and not isinstance(payload["gitIgnore"], str):
            raise _Refusal(400, "gitIgnore must be a string")
        tree = self._tree(repo_id, branch)
        answers = []
        for item in files:
            path, size, sample = (item.get("path"), item.get("size"), item.get("sample")) if isinstance(item, dict) \
                else (None, None, None)
            if not isinstance(size, int) or isinstance(size, bool) or size < 0 or not isinstance(sample, str):
                raise _Refusal(400, f"preupload entry {item!r} needs path, size (int >= 0) and sample (base64)")
            _check_path(path)
            try:
                sample_bytes = base64.b64decode(sample, validate=True)
            except (binascii.Error, ValueError):
                raise _Refusal(400, f"preupload sample of {path} is not base64") from None
            if len(sample_bytes) > 512 or len(sample_bytes) > size:
                raise _Refusal(400, f"preupload sample of {path} is {len(sample_bytes)} bytes for a {size}-byte file")
            existing = tree.get(path)
            answers.append({"path": path, "uploadMode": "regular", "shouldIgnore": False,
                            "oid": git_blob_sha1(existing[0]) if existing else None})
        return _json(200, {"files": answers, "commitOid": self.head(repo_id, branch)})

    def _commit(self, repo_id: str, branch: str, body: bytes) -> Answer:
        try:
            lines = [json.loads(line) for line in body.decode("utf-8").splitlines() if line.strip()]
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise _Refusal(400, f"a commit body is one JSON object per line: {error}") from None
        if not lines or not isinstance(lines[0], dict) or lines[0].get("key") != "header":
            raise _Refusal(400, "a commit starts with a 'header' line")
        header = lines[0].get("value")
        if not isinstance(header, dict) or not isinstance(header.get("summary"), str) or not header["summary"].strip():
            raise _Refusal(400, "the commit header needs a summary")
        parent = self.head(repo_id, branch)
        if header.get("parentCommit") not in (None, parent):
            raise _Refusal(412, f"A commit has happened since {header['parentCommit']}: {branch} is at {parent}")
        tree = dict(self._tree(repo_id, branch))
        added: dict[str, bytes] = {}
        deleted: list[str] = []
        for line in lines[1:]:
            key, value = (line.get("key"), line.get("value")) if isinstance(line, dict) else (None, None)
            if not isinstance(value, dict):
                raise _Refusal(400, f"commit line {line!r} has no value object")
            path = value.get("path")
            if key == "file":
                _check_path(path)
                if value.get("encoding") != "base64" or not isinstance(value.get("content"), str):
                    raise _Refusal(400, f"file {path}: content must be base64 text with encoding 'base64'")
                try:
                    data = base64.b64decode(value["content"], validate=True)
                except (binascii.Error, ValueError):
                    raise _Refusal(400, f"file {path}: content is not valid base64") from None
                if path in added:
                    raise _Refusal(400, f"file {path} appears twice in one commit")
                added[path] = data
                tree[path] = (data, False)
            elif key == "lfsFile":
                raise _Refusal(422, f"{path}: no LFS object was uploaded for it (preupload answered 'regular')")
            elif key in ("deletedFile", "deletedFolder"):
                _check_path(path)
                if key == "deletedFile":
                    gone = [name for name in tree if name == path]
                else:
                    gone = [name for name in tree if name.startswith(path.rstrip("/") + "/")]
                if not gone:
                    raise _Refusal(404, f"cannot delete {path}: not in {repo_id} at {branch}", code="EntryNotFound")
                for name in gone:
                    del tree[name]
                deleted.extend(gone)
            else:
                raise _Refusal(400, f"unknown commit line key {key!r}")
        listing = "".join(f"{name}\0{git_blob_sha1(data)}\n" for name, (data, _) in sorted(tree.items()))
        sha = hashlib.sha1(f"{parent}\n{header['summary']}\n{len(self.commits)}\n{listing}".encode()).hexdigest()
        self._store(repo_id, branch, sha, tree)
        self.commits.append({"repo_id": repo_id, "revision": branch, "oid": sha, "parent": parent,
                             "summary": header["summary"], "description": header.get("description", ""),
                             "files": added, "deleted": deleted})
        return _json(200, {"success": True, "commitOid": sha, "commitUrl": f"{self.url}/{repo_id}/commit/{sha}",
                           "hookOutput": ""})


def _json(status: int, payload) -> Answer:
    return status, {"Content-Type": "application/json"}, json.dumps(payload).encode()


def _json_body(body: bytes) -> dict:
    try:
        payload = json.loads(body or b"null")
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise _Refusal(400, f"the request body is not JSON: {error}") from None
    if not isinstance(payload, dict):
        raise _Refusal(400, "the request body must be a JSON object")
    return payload


def _valid_name(name) -> bool:
    return isinstance(name, str) and bool(name) and len(name) <= 96 and name not in (".", "..") and all(
        c.isascii() and (c.isalnum() or c in "-_.") for c in name)


def _check_path(path) -> None:
    if not isinstance(path, str) or not path or path.startswith("/") or any(
            part in ("", ".", "..") for part in path.split("/")):
        raise _Refusal(400, f"invalid path in repo: {path!r}")


class _Handler(BaseHTTPRequestHandler):
    def do_HEAD(self) -> None:
        self._reply(send_body=False)

    def do_GET(self) -> None:
        self._reply(send_body=True)

    def do_POST(self) -> None:
        self._reply(send_body=True, body=self._read_body())

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _reply(self, send_body: bool, body: bytes = b"") -> None:
        answer = self.server.hub._answer(self.command, self.path, self.headers, body)
        if answer is None:
            return
        status, headers, payload = answer
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))  # a HEAD announces the length its GET would send
        self.end_headers()
        hub = self.server.hub
        if send_body and hub.mode == "trickle" and "/resolve/" in self.path:
            for byte in payload:
                if hub._stopping.wait(hub.trickle_s):
                    return
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
        elif send_body:
            self.wfile.write(payload)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the base class's signature)
        pass  # keep test output clean; HubServer.requests records what came in


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """A running :class:`HubServer` that huggingface_hub talks to, in this process and in child processes, with an
    empty Hugging Face cache (``tmp_path/hf``) and canon cache (``tmp_path/canon``) of the test's own, and no token:
    a token of the machine's (environment or token file) is never sent, and a test that writes sets
    ``HF_TOKEN`` to :data:`TOKEN`.

    huggingface_hub reads HF_ENDPOINT, HF_HUB_CACHE, HF_HUB_OFFLINE and the token path once, at import, into
    ``constants``: those are patched for this process, and the environment is set for child processes.
    """
    with HubServer() as server:
        env = {
            "HF_ENDPOINT": server.url,
            "HF_HOME": str(tmp_path / "hf"),
            "HF_HUB_CACHE": str(tmp_path / "hf" / "hub"),
            "HF_TOKEN_PATH": str(tmp_path / "hf" / "token"),
            "CANON_CACHE_DIR": str(tmp_path / "canon"),
            "NO_PROXY": "127.0.0.1,localhost",  # a proxy configured for the machine must not see loopback calls
            # Else the first request of a process is preceded by a telemetry GET /api/agent-harnesses (3 s timeout).
            "HF_HUB_DISABLE_TELEMETRY": "1",
        }
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_ETAG_TIMEOUT", "HF_TOKEN",
                     "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setattr(hf_constants, "ENDPOINT", server.url)
        monkeypatch.setattr(
            hf_constants, "HUGGINGFACE_CO_URL_TEMPLATE", server.url + "/{repo_id}/resolve/{revision}/{filename}"
        )
        monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", env["HF_HUB_CACHE"])
        monkeypatch.setattr(hf_constants, "HF_TOKEN_PATH", env["HF_TOKEN_PATH"])
        monkeypatch.setattr(hf_constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "hf" / "stored_tokens"))
        monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(hf_constants, "HF_HUB_ETAG_TIMEOUT", hf_constants.DEFAULT_ETAG_TIMEOUT)
        monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_TELEMETRY", True)
        close_session()  # the shared HTTP client read the proxy settings when it was made: make a fresh one
        yield server
    close_session()
