"""Security of the demo: --share with --auth, the upload size cap, no file served from outside Gradio's own folders,
no secret in the logs, checkpoints loaded with weights_only=True. Loopback only; nothing reaches the internet (the
share link is checked in the launch arguments the app builds, never opened). Fuzzing of image loading and prompt
parsing is in tests/test_images.py and tests/test_segmenter.py.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import time
import urllib.parse

import httpx
import pytest

import app
from app_server import serve, standin_models
from canon.bench import free_port
from canon.images import MAX_FILE_BYTES
from conftest import REPO

CAT = REPO / "examples" / "animals_cat.jpg"


# ------------------------------------------------------------------------------------------------ share + auth


def test_share_and_auth_are_passed_to_launch_together(monkeypatch):
    launched = {}
    monkeypatch.setattr(app, "build_demo", lambda models, **options: "demo")
    monkeypatch.setattr(app, "launch", lambda demo, **options: launched.update(options, demo=demo))
    app.main(["--share", "--auth", "user:secret:with:colons", "--device", "cpu"])
    assert launched["demo"] == "demo" and launched["share"] is True
    assert launched["auth"] == ("user", "secret:with:colons")  # split at the first colon only

    launched.clear()
    monkeypatch.setenv("GRADIO_SHARE", "1")
    monkeypatch.setenv("CANON_AUTH", "visitor:pw")
    app.main(["--device", "cpu"])
    assert launched["share"] is True and launched["auth"] == ("visitor", "pw")


@pytest.mark.parametrize("auth", ["nocolon", ":pw", "user:"])
def test_a_malformed_auth_is_refused(auth, capsys):
    with pytest.raises(SystemExit):
        app.main(["--share", "--auth", auth])
    assert "--auth takes USER:PASS" in capsys.readouterr().err


def test_launch_caps_uploads_and_keeps_share_and_auth():
    """app.launch's settings reach gr.Blocks.launch: the upload cap, plus share and auth as given."""
    calls = {}

    class FakeDemo:
        def queue(self, **options):
            calls["queue"] = options
            return self

        def launch(self, **options):
            calls["launch"] = options

    app.launch(FakeDemo(), share=True, auth=("user", "pw"), server_name="127.0.0.1")
    settings = calls["launch"]
    assert settings["max_file_size"] == MAX_FILE_BYTES == 50 * 2**20
    assert settings["share"] is True and settings["auth"] == ("user", "pw")
    assert settings["state_session_capacity"] > 0 and calls["queue"]["max_size"] > 0


# ------------------------------------------------------------------------------------------ the running app


@pytest.fixture(scope="module")
def url(paper_canonicalizer, standin_sam_path):
    with serve(standin_models(paper_canonicalizer, standin_sam_path)) as url:
        yield url


def test_uploads_over_the_cap_are_refused(url):
    small = httpx.post(url + "gradio_api/upload", files={"files": ("cat.jpg", CAT.read_bytes())}, timeout=60)
    assert small.status_code == 200 and small.json()[0].endswith("cat.jpg")
    big = httpx.post(url + "gradio_api/upload", files={"files": ("big.png", b"\0" * (MAX_FILE_BYTES + 1024))},
                     timeout=120)
    assert big.status_code == 413, (big.status_code, big.text[:200])


def _strings(value):
    if isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
    elif isinstance(value, str):
        yield value


@pytest.mark.parametrize("path", [
    "gradio_api/file=/etc/passwd",
    "file=/etc/passwd",
    "gradio_api/file=../../etc/passwd",
    "file=../../etc/passwd",
    "gradio_api/file=" + urllib.parse.quote("../../../../../../etc/passwd"),
    "gradio_api/file=%2Fetc%2Fpasswd",
    f"gradio_api/file={REPO / 'app.py'}",
    f"gradio_api/file={REPO / 'weights' / 'models.json'}",
    "gradio_api/file=app.py",
    "gradio_api/file=weights/models.json",
    f"gradio_api/file={CAT}",  # the example as it lies in the repository: served only from Gradio's cache
])
def test_no_file_outside_the_apps_folders_is_served(url, path):
    response = httpx.get(url + path, timeout=30)
    assert response.status_code in (403, 404), (response.status_code, response.text[:200])
    assert "root:" not in response.text and "def build_demo" not in response.text


def test_the_example_photos_are_served(url):
    config = httpx.get(url + "config", timeout=30).json()
    links = {s for s in _strings(config) if "animals_cat" in s and "file=" in s}
    paths = {s for s in _strings(config) if s.endswith("animals_cat.jpg") and s != str(CAT)}
    candidates = sorted(links) or [f"gradio_api/file={p}" for p in sorted(paths)]
    assert candidates, "the example photo is not in the page's config"
    link = candidates[0]
    response = httpx.get(link if link.startswith("http") else url + link.lstrip("/"), timeout=30)
    assert response.status_code == 200 and response.content == CAT.read_bytes()


# ---------------------------------------------------------------------------------------------------- secrets


def test_no_secret_is_logged(tmp_path):
    token, password = "hf_secret_test_value", "secretpass"
    port = free_port()
    env = dict(os.environ, HF_TOKEN=token, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"),
               CANON_CACHE_DIR=str(tmp_path / "c"), CANON_DEVICE="cpu", GRADIO_ANALYTICS_ENABLED="False",
               PYTHONUNBUFFERED="1")
    server = subprocess.Popen([sys.executable, "app.py", "--server-name", "127.0.0.1", "--port", str(port),
                               "--auth", f"user:{password}"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 150
        while True:
            try:
                httpx.get(url, timeout=5)
                break
            except httpx.HTTPError:
                assert server.poll() is None, server.communicate()
                assert time.monotonic() < deadline, "the app did not start within 150 s"
                time.sleep(1)
        assert httpx.get(url + "config", timeout=30).status_code in (401, 403)  # auth is on
        wrong = httpx.post(url + "login", data={"username": "user", "password": "wrong"}, timeout=30)
        assert wrong.status_code >= 400
        right = httpx.post(url + "login", data={"username": "user", "password": password}, timeout=30)
        assert right.status_code == 200
        assert httpx.get(url + "config", cookies=right.cookies, timeout=30).status_code == 200
    finally:
        server.terminate()
        out, err = server.communicate(timeout=30)
    log = out + err
    assert f"127.0.0.1:{port}" in log, log[-2000:]  # the output was captured: the app says where it listens
    assert token not in log and password not in log, log[-2000:]


# --------------------------------------------------------------------------------------------- checkpoints


def _torch_load_calls(tree: ast.AST):
    """Every call of torch.load (as torch.load, an alias of torch, or a name imported from torch)."""
    torch_names, load_names = {"torch"}, set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            torch_names |= {a.asname or a.name for a in node.names if a.name == "torch"}
        elif isinstance(node, ast.ImportFrom) and node.module == "torch":
            load_names |= {a.asname or a.name for a in node.names if a.name == "load"}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if (isinstance(func, ast.Attribute) and func.attr == "load" and isinstance(func.value, ast.Name)
                and func.value.id in torch_names) or (isinstance(func, ast.Name) and func.id in load_names):
            yield node


def test_every_torch_load_passes_weights_only_true():
    files = [REPO / "app.py", *sorted((REPO / "canon").rglob("*.py"))]
    calls = 0
    for path in files:
        tree = ast.parse(path.read_text(), filename=str(path))
        for call in _torch_load_calls(tree):
            calls += 1
            where = f"{path.relative_to(REPO)}:{call.lineno}"
            weights_only = [k for k in call.keywords if k.arg == "weights_only"]
            assert weights_only, f"{where}: torch.load without weights_only=True"
            value = weights_only[0].value
            assert isinstance(value, ast.Constant) and value.value is True, f"{where}: weights_only is not True"
            assert not any(k.arg is None for k in call.keywords), f"{where}: **kwargs could override weights_only"
        for node in ast.walk(tree):  # no other unpickling either
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                assert (node.value.id, node.attr) not in {("pickle", "load"), ("pickle", "loads"),
                                                          ("dill", "load"), ("joblib", "load")}, \
                    f"{path.relative_to(REPO)}:{node.lineno}: unpickling"
    assert calls >= 2  # canon/segmenter.py (SAM checkpoints) and canon/convert.py (the paper's checkpoint)
