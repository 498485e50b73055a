"""``python -m canon publish`` end to end against the loopback stand-in for the Hub (never the real network): the
folder is pushed, then loaded back the way a deployed app finds it (``CANON_CANONICALIZER_REPO``)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx2
import numpy as np
import pytest
import torch
from huggingface_hub import hf_hub_download

from canon import registry
from canon.cli import main
from canon.canonicalizer import Canonicalizer
from tests.hub_server import TOKEN, git_blob_sha1, hub  # noqa: F401 (hub is a fixture)

ROOT = Path(__file__).resolve().parent.parent
PAPER = ROOT / "canon" / "weights" / "wrn-c4-paper"
REPO_ID = "deployer/canonicalizer-wrn-c4"
EXPECTED_REQUESTS = [
    ("POST", "/api/repos/create"),
    ("POST", "/api/validate-yaml"),  # the README.md model card's metadata
    ("POST", f"/api/models/{REPO_ID}/preupload/main"),
    ("POST", f"/api/models/{REPO_ID}/commit/main"),
]


@pytest.fixture(autouse=True)
def no_redirect(monkeypatch):
    """The machine's CANON_CANONICALIZER_* must not send ``wrn-c4-paper`` elsewhere."""
    for name in (registry.ENV_CANONICALIZER_REPO, registry.ENV_CANONICALIZER_REVISION):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def token(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    return TOKEN


def empty_weights(monkeypatch, tmp_path) -> Path:
    """From here on, a deployment without weights/: the canonicalizer can only come from the Hub."""
    weights = tmp_path / "weights"
    weights.mkdir()
    monkeypatch.setattr(registry, "WEIGHTS_DIR", weights)
    return weights


def assert_same_weights(model: Canonicalizer, reference: Canonicalizer) -> None:
    state, expected = model.state_dict(), reference.state_dict()
    assert state.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(state[name], tensor), name


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def folder_files(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in folder.iterdir() if path.is_file()}


def publish_cli(*args: str) -> subprocess.CompletedProcess:
    """``python -m canon publish ...`` in a fresh process: HF_ENDPOINT and HF_TOKEN from the environment only."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "canon", "publish", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def published(capsys, *args: str) -> str:
    """Publish in this process; return the commit sha printed."""
    assert main(["publish", *args]) == 0, capsys.readouterr().err
    first = capsys.readouterr().out.splitlines()[0]
    return first.rsplit("/commit/", 1)[1]


def error_line(capsys, argv: list[str]) -> str:
    """The single stderr line of a ``main(argv)`` that exits with status 2."""
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    return lines[0]


# --- publishing ----------------------------------------------------------------------------------------------------


def test_publish_pushes_exactly_the_folder(hub, token):
    local = folder_files(PAPER)
    assert sorted(local) == ["LICENSE", "README.md", "config.json", "model.safetensors"]

    out = publish_cli("wrn-c4-paper", "--repo-id", REPO_ID)

    assert out.returncode == 0, out.stderr
    assert hub.requests == EXPECTED_REQUESTS
    assert hub.repos == {REPO_ID: {"private": False}}
    (commit,) = hub.commits
    assert commit["repo_id"] == REPO_ID and commit["revision"] == "main"
    assert commit["summary"] == "Upload canonicalizer wrn-c4-paper"
    assert commit["files"] == local and commit["deleted"] == []
    assert hub.files(REPO_ID) == local == hub.files(REPO_ID, commit["oid"])
    assert out.stdout.splitlines() == [
        f"published {PAPER} to {REPO_ID}: {hub.url}/{REPO_ID}/commit/{commit['oid']}",
        f"point the app at it with CANON_CANONICALIZER_REPO={REPO_ID}",
    ]


def test_published_files_download_at_the_new_commit(hub, token, capsys):
    sha = published(capsys, "wrn-c4-paper", "--repo-id", REPO_ID)
    assert sha == hub.commits[-1]["oid"] and sha == hub.head(REPO_ID, "main")
    for name, data in folder_files(PAPER).items():
        path = hf_hub_download(REPO_ID, name, revision=sha)
        assert Path(path).read_bytes() == data
        assert Path(path).parent.name == sha  # the Hugging Face cache files it under the commit sha


def test_republishing_unchanged_files_makes_no_commit(hub, token, capsys):
    first = published(capsys, "wrn-c4-paper", "--repo-id", REPO_ID)
    before = len(hub.requests)
    assert published(capsys, "wrn-c4-paper", "--repo-id", REPO_ID) == first
    assert len(hub.commits) == 1
    assert ("POST", f"/api/models/{REPO_ID}/commit/main") not in hub.requests[before:]


def test_a_new_version_moves_main_and_keeps_the_old_commit(hub, token, capsys, tmp_path):
    first = published(capsys, "wrn-c4-paper", "--repo-id", REPO_ID)
    folder = tmp_path / "wrn-v2"
    folder.mkdir()
    for name, data in folder_files(PAPER).items():
        (folder / name).write_bytes(data)
    (folder / "README.md").write_text(folder_files(PAPER)["README.md"].decode() + "\nVersion 2.\n")
    second = published(capsys, str(folder), "--repo-id", REPO_ID)

    assert second != first and hub.head(REPO_ID, "main") == second
    assert hub.commits[-1]["files"] == {"README.md": (folder / "README.md").read_bytes()}  # only what changed
    assert hub.commits[-1]["parent"] == first
    assert hub.files(REPO_ID, first) == folder_files(PAPER)
    assert hub.files(REPO_ID, second) == folder_files(folder) == hub.files(REPO_ID)


# --- loading what was published -------------------------------------------------------------------------------------


def test_the_app_loads_the_published_canonicalizer(hub, token, capsys, monkeypatch, tmp_path, paper_canonicalizer):
    sha = published(capsys, "wrn-c4-paper", "--repo-id", REPO_ID)
    weights = empty_weights(monkeypatch, tmp_path)
    image = np.random.default_rng(0).integers(0, 256, size=(64, 80, 3), dtype=np.uint8)
    expected = paper_canonicalizer.logits(image)

    # As a deployer does it: weights/ is empty, the environment names the repo (and, here, pins the commit).
    monkeypatch.setenv(registry.ENV_CANONICALIZER_REPO, REPO_ID)
    monkeypatch.setenv(registry.ENV_CANONICALIZER_REVISION, sha)
    folder = registry.resolve_canonicalizer_dir(registry.default_canonicalizer())
    assert folder.name == sha and weights not in folder.parents
    for name in registry.CANONICALIZER_FILES:
        assert (folder / name).read_bytes() == (PAPER / name).read_bytes()
    from_env = Canonicalizer.load(None)
    np.testing.assert_array_equal(from_env.logits(image), expected)
    assert_same_weights(from_env, paper_canonicalizer)

    # As a caller does it: the repo as an argument (branch main). Same weights, so the same logits: one network pass
    # (seconds on a busy CPU) is spared.
    monkeypatch.delenv(registry.ENV_CANONICALIZER_REPO)
    monkeypatch.delenv(registry.ENV_CANONICALIZER_REVISION)
    assert_same_weights(Canonicalizer.load(None, repo_id=REPO_ID), paper_canonicalizer)


def test_a_private_repo_needs_the_token_to_load(hub, token, capsys, monkeypatch, tmp_path):
    published(capsys, "wrn-c4-paper", "--repo-id", REPO_ID, "--private")
    empty_weights(monkeypatch, tmp_path)
    assert hub.repos[REPO_ID] == {"private": True}
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(registry.ModelUnavailableError, match=f"the Hub has no repo {REPO_ID} \\(or it is private"):
        registry.resolve_canonicalizer_dir(registry.default_canonicalizer(), repo_id=REPO_ID)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    folder = registry.resolve_canonicalizer_dir(registry.default_canonicalizer(), repo_id=REPO_ID)
    assert (folder / "model.safetensors").read_bytes() == (PAPER / "model.safetensors").read_bytes()


# --- failures ------------------------------------------------------------------------------------------------------


def test_hub_failure_is_one_error_line(hub, token, capsys):
    hub.mode = "error"
    line = error_line(capsys, ["publish", "wrn-c4-paper", "--repo-id", REPO_ID])
    assert line.startswith(f"error: publishing to {REPO_ID} failed (")
    assert "500 Internal Server Error" in line
    assert hub.requests == [("POST", "/api/repos/create")]  # no retries: it fails at once


@pytest.mark.parametrize("given", [None, "hf_notTheRightToken"])
def test_missing_or_wrong_token_is_one_error_line(hub, capsys, monkeypatch, given):
    if given is not None:
        monkeypatch.setenv("HF_TOKEN", given)
    line = error_line(capsys, ["publish", "wrn-c4-paper", "--repo-id", REPO_ID])
    assert line.startswith(f"error: publishing to {REPO_ID} failed (") and "401 Unauthorized" in line
    assert "set HF_TOKEN" in line
    assert hub.repos == {} and hub.commits == []


def test_missing_token_on_an_existing_repo_fails_at_upload(hub, token, capsys, monkeypatch):
    published(capsys, "wrn-c4-paper", "--repo-id", REPO_ID)
    monkeypatch.delenv("HF_TOKEN")
    line = error_line(capsys, ["publish", "wrn-c4-paper", "--repo-id", REPO_ID])
    assert line.startswith(f"error: publishing to {REPO_ID} failed (") and "401 Unauthorized" in line
    assert hub.requests[-1] == ("POST", f"/api/models/{REPO_ID}/preupload/main")  # the repo exists: upload refused
    assert len(hub.commits) == 1


def test_failure_in_a_fresh_process(hub, token):
    hub.mode = "error"
    out = publish_cli("wrn-c4-paper", "--repo-id", REPO_ID)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.startswith(f"error: publishing to {REPO_ID} failed (")
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr


# --- the stand-in refuses what the Hub would ----------------------------------------------------------------------


def test_stand_in_checks_what_it_is_sent(hub):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    ndjson = {**auth, "Content-Type": "application/x-ndjson"}

    with httpx2.Client(base_url=hub.url) as client:

        def create(name: str, headers=None) -> httpx2.Response:
            return client.post("/api/repos/create", json={"name": name, "organization": "o"}, headers=headers)

        def commit(*lines, header: dict | None = None) -> int:
            first = [{"key": "header", "value": header}] if header is not None else []
            data = "".join(json.dumps(line) + "\n" for line in [*first, *lines])
            return client.post("/api/models/o/x/commit/main", content=data, headers=ndjson).status_code

        def file(path: str, content: str) -> dict:
            return {"key": "file", "value": {"path": path, "content": content, "encoding": "base64"}}

        def preupload(revision: str, *files: tuple[str, bytes, int]) -> httpx2.Response:
            payload = {"files": [{"path": p, "sample": b64(sample), "size": size} for p, sample, size in files]}
            return client.post(f"/api/models/o/x/preupload/{revision}", headers=auth, json=payload)

        assert create("x").status_code == 401
        wrong = create("x", {"Authorization": "Bearer hf_wrong"})
        assert wrong.status_code == 401
        assert wrong.headers["X-Error-Message"] == "Invalid credentials in Authorization header"
        assert [create("x", auth).status_code, create("x", auth).status_code, create("../x", auth).status_code] == [
            200, 409, 400]

        summary = {"summary": "s"}
        assert commit(file("a.txt", b64(b"A"))) == 400  # no header line
        assert commit(file("a.txt", "not base64!"), header=summary) == 400
        assert commit(file("../a.txt", b64(b"A")), header=summary) == 400
        lfs = {"key": "lfsFile", "value": {"path": "w.bin", "algo": "sha256", "oid": "0" * 64}}
        assert commit(lfs, header=summary) == 422  # no LFS object was ever uploaded
        assert commit({"key": "deletedFile", "value": {"path": "absent"}}, header=summary) == 404
        assert commit(header={"summary": "s", "parentCommit": "0" * 40}) == 412
        assert hub.commits == []
        assert commit(file("a.txt", b64(b"A")), header=summary) == 200
        assert hub.files("o/x") == {"a.txt": b"A"}

        answer = preupload("main", ("a.txt", b"A", 1), ("b.bin", b"B" * 512, 10**9))
        assert answer.json()["files"] == [
            {"path": "a.txt", "uploadMode": "regular", "shouldIgnore": False, "oid": git_blob_sha1(b"A")},
            {"path": "b.bin", "uploadMode": "regular", "shouldIgnore": False, "oid": None},
        ]
        assert preupload("main", ("c.bin", b"C" * 513, 10**9)).status_code == 400  # a sample is 512 bytes at most
        assert preupload("v9", ("a.txt", b"", 0)).headers["X-Error-Code"] == "RevisionNotFound"
        assert client.post("/api/validate-yaml", json={"content": "---\n[a\n---\n"}).status_code == 400


def test_publish_reads_the_local_folder_even_when_a_hub_override_is_set(monkeypatch, capsys):
    """A deployer who already points the app at a Hub repo must still publish the local weights/ folder; an unknown
    name is refused before any request."""
    from canon.cli import main

    monkeypatch.setenv("CANON_CANONICALIZER_REPO", "someone/elsewhere")
    assert main(["publish", "no-such-model", "--repo-id", "deployer/x"]) == 2
    assert "neither a model folder nor a name in canon/weights/" in capsys.readouterr().err
