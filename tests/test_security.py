"""Security of the demo: --share with --auth, the upload size cap, no file served from outside Gradio's own folders,
no secret in the logs, checkpoints loaded with weights_only=True, and the requests an attacker makes of the API (file
payloads naming paths the app never received, special files, huge photos, numeric and nesting extremes) each refused
with one sentence while a well-behaved visitor is answered as usual. Loopback only; nothing reaches the internet (the
share link is checked in the launch arguments the app builds, never opened). Fuzzing of image loading and prompt
parsing is in tests/test_images.py and tests/test_prompts.py.
"""

from __future__ import annotations

import ast
import concurrent.futures
import io
import json
import os
import secrets
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
from gradio.utils import get_upload_folder
from PIL import Image

import app
from app_server import serve, standin_models
from benchmarks.app_memory import free_port
from canon import maskio
from canon.images import MAX_FILE_BYTES, UPLOAD_REFUSAL
from conftest import REPO

CAT = REPO / "examples" / "animals_cat.jpg"
STATUS = app.Page._fields.index("status")  # the status line among the outputs of a page event


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


@pytest.mark.parametrize("args, env, message", [
    (["--concurrency", "0"], {}, "argument --concurrency: 0 is not from 1 to 64"),
    (["--concurrency", "-5"], {}, "argument --concurrency: -5 is not from 1 to 64"),
    ([], {"CANON_CONCURRENCY": "many"}, "argument --concurrency: 'many' is not a whole number"),
    (["--port", "70000"], {}, "argument --port: 70000 is not from 1 to 65535"),
    ([], {"GRADIO_SERVER_PORT": "http"}, "argument --port: 'http' is not a whole number"),
])
def test_launch_options_are_range_checked_with_one_error_line(args, env, message, monkeypatch, capsys):
    """Before anything is loaded or served: --concurrency 0 would start an app whose requests wait forever."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(app, "launch", lambda *a, **k: pytest.fail("the app was launched"))
    with pytest.raises(SystemExit) as exit_info:
        app.main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [f"error: {message} (see python app.py --help)"], err


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
    f"gradio_api/file={REPO / 'canon' / 'weights' / 'models.json'}",
    "gradio_api/file=app.py",
    "gradio_api/file=canon/weights/models.json",
    f"gradio_api/file={CAT}",  # the example as it lies in the repository: served only from Gradio's cache
])
def test_no_file_outside_the_apps_folders_is_served(url, path):
    response = httpx.get(url + path, timeout=30)
    assert response.status_code in (403, 404), (response.status_code, response.text[:200])
    assert "root:" not in response.text and "def build_demo" not in response.text


def test_the_example_photos_are_served(url):
    """The examples' gallery: every thumbnail in the page's config is served, as a picture."""
    config = httpx.get(url + "config", timeout=30).json()
    gallery = next(c for c in config["components"] if c.get("props", {}).get("elem_id") == "examples")
    links = [item["image"]["url"] for item in gallery["props"]["value"]]
    assert len(links) == len(app.EXAMPLES)
    for link in links:
        response = httpx.get(link if link.startswith("http") else url + link.lstrip("/"), timeout=30)
        assert response.status_code == 200 and Image.open(io.BytesIO(response.content)).size[0] > 0


# ---------------------------------------------------------------------------------------------------- secrets


@pytest.mark.slow  # the app started as a process of its own
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


# -------------------------------------------------------------------------------------- hostile API requests


def call(url: str, api: str, body: str, timeout: float = 120) -> tuple[str, object]:
    """One request to a named endpoint as raw HTTP, with a body an attacker wrote (any JSON text, not what
    gradio_client would make of it); returns ("complete", outputs), ("error", message) or ("http", status)."""
    posted = httpx.post(f"{url}gradio_api/call/{api}", content=body, headers={"content-type": "application/json"},
                        timeout=timeout)
    if posted.status_code != 200:
        return "http", posted.status_code
    answer = httpx.get(f"{url}gradio_api/call/{api}/{posted.json()['event_id']}", timeout=timeout).text
    event = data = None
    for line in answer.splitlines():
        if line.startswith("event: "):
            event = line[len("event: "):]
        elif line.startswith("data: ") and event in ("complete", "error"):
            data = json.loads(line[len("data: "):])
            return event, data if event == "complete" else (data or {}).get("error")
    raise AssertionError(f"no answer: {answer[:300]}")


def uploaded(url: str, name: str, data: bytes) -> str:
    response = httpx.post(url + "gradio_api/upload", files={"files": (name, data)}, timeout=120)
    assert response.status_code == 200, response.text[:200]
    return response.json()[0]


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def payload(path, meta: bool = True):
    return {"path": path, "meta": {"_type": "gradio.FileData"}} if meta else {"path": path}


def assert_one_sentence(message) -> None:
    """What a refused visitor reads: one sentence, no quotes around it, no server path or traceback."""
    assert isinstance(message, str) and message, message
    assert message[0].isupper() and message.endswith(".") and message[0] not in "'\"" and "\n" not in message
    assert "/" not in message and "Traceback" not in message and "--" not in message, message


@pytest.fixture(scope="module")
def hostile_paths(tmp_path_factory, url):
    """Paths an attacker names: files the app never received, inside and outside Gradio's upload folder."""
    outside = tmp_path_factory.mktemp("outside")
    secret = outside / "secret.png"
    secret.write_bytes(png(Image.new("RGB", (64, 48), (1, 2, 3))))
    pipe = outside / "pipe.png"
    os.mkfifo(pipe)
    inside = Path(get_upload_folder()) / secrets.token_hex(32)
    inside.mkdir(parents=True)
    (inside / "link.png").symlink_to(secret)  # a link Gradio's folder check lets through
    (inside / "planted.png").write_bytes(secret.read_bytes())  # in the folder, but never uploaded
    os.mkfifo(inside / "pipe.png")
    cat = uploaded(url, "cat.jpg", CAT.read_bytes())
    event, outputs = call(url, "canonicalize", json.dumps({"data": [payload(cat), 0]}))
    assert event == "complete"
    another_visitors_output = outputs[0]["path"]  # a file in the upload folder that the app wrote itself
    paths = [str(secret), str(pipe), "/etc/passwd", "/dev/zero", "/proc/self/environ", str(REPO / "app.py"),
             str(inside / "link.png"), str(inside / "planted.png"), str(inside / "pipe.png"), str(inside),
             str(inside / ".." / ".." / "etc" / "passwd"), another_visitors_output, "", "relative/cat.jpg"]
    yield paths
    for path in inside.iterdir():
        path.unlink()
    inside.rmdir()


@pytest.mark.parametrize("meta", [True, False], ids=["gradio-file-data", "plain-dict"])
def test_no_file_the_visitor_did_not_upload_is_read(url, hostile_paths, meta):
    for api in ("canonicalize", "segment"):
        for path in hostile_paths:
            data = [payload(path, meta), 0] + (["[[10, 10, 1]]", "", "standin", True] if api == "segment" else [])
            event, message = call(url, api, json.dumps({"data": data}), timeout=60)
            assert (event, message) == ("error", UPLOAD_REFUSAL[0].upper() + UPLOAD_REFUSAL[1:] + "."), (api, path)
    event, message = call(url, "canonicalize", json.dumps({"data": [hostile_paths[0], 0]}))  # a bare path
    assert event == "error"
    assert_one_sentence(message)


@pytest.mark.parametrize("data, answer", [
    ('[[10, 10, Infinity]]', "finite numbers"),
    ('[[10, 10, 1e30]]', "labels must be 1"),
    ('[[1e30, 10, 1]]', "beyond any photo"),
    ('[[10, %s, 1]]' % ("9" * 400), "more than 32 characters"),
    ("[" * 50_000 + "]" * 50_000, "longer than"),
    ("[" * 3000, "Give points as JSON"),
    ('{"__proto__": 1}', "Give points as JSON"),
])
def test_hostile_prompts_get_one_sentence(url, data, answer):
    cat = uploaded(url, "cat.jpg", CAT.read_bytes())
    event, message = call(url, "segment", json.dumps({"data": [payload(cat), 0, data, "", "standin", True]}))
    assert event == "error" and answer in message, message
    assert_one_sentence(message)


@pytest.mark.parametrize("field, value", [
    (1, "1e400"), (1, '{"deg": 90}'), (1, '"ninety"'), (1, '"' + "9" * 400 + '"'), (1, "true"),
    (4, '["standin"]'), (4, '"../../weights/sam.pth"'), (5, '"yes"'), (3, "[1, 2, 3]"),
])
def test_hostile_fields_get_one_sentence(url, field, value):
    cat = uploaded(url, "cat.jpg", CAT.read_bytes())
    fields = [json.dumps(payload(cat)), "0", '"[[10, 10, 1]]"', '""', '"standin"', "true"]
    fields[field] = value
    event, message = call(url, "segment", '{"data": [' + ", ".join(fields) + "]}")
    assert event == "error", (field, value, message)
    assert_one_sentence(message)


def test_a_deeply_nested_request_is_refused_and_the_server_answers_on(url):
    assert call(url, "canonicalize", '{"data": ' + "[" * 100_000 + "]" * 100_000 + "}") == ("http", 400)
    cat = uploaded(url, "cat.jpg", CAT.read_bytes())
    assert call(url, "canonicalize", json.dumps({"data": [payload(cat), 90]}))[0] == "complete"


def test_a_huge_photo_through_the_api_gets_the_pages_bound(url):
    """A 40-megapixel photo costs about what a page upload does: decoded at the page's bound (1600 px), prompts
    given in its own pixels and scaled with it, masks and overlays in the shrunk frame."""
    big = uploaded(url, "big.png", png(Image.new("RGB", (7300, 5450), (120, 140, 90))))
    process, peak, stop = psutil.Process(), [0], threading.Event()

    def watch():
        while not stop.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.005)

    base = process.memory_info().rss
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        event, outputs = call(url, "segment", json.dumps(
            {"data": [payload(big), 90, "[[3650, 2725, 1]]", "[365, 272, 6935, 5177]", "standin", True]}))
    finally:
        stop.set()
        watcher.join()
    assert event == "complete", outputs
    info = outputs[2]
    assert info["photo_size"] == [7300, 5450] and info["processed_size"] == [1600, 1195]
    masks, _ = maskio.masks_from_coco(info["sam"]["masks"])
    assert masks.shape[1:] == (1600, 1195)  # the shrunk photo, turned by 90 degrees
    for overlay in outputs[:2]:
        assert Image.open(overlay["path"]).size == (1195, 1600)
    # Measured at about 160 MB (the 120 MB of one decoded 40-megapixel frame, then the page's size); the bound
    # leaves room for a busy allocator, far under the gigabytes a full-size run took.
    assert peak[0] - base < 1024 * 2**20, f"{(peak[0] - base) / 2**20:.0f} MB for one call"


def test_hostile_requests_neither_delay_nor_change_a_visitors_answer(url, hostile_paths, capfd, caplog):
    """A visitor's request among a burst of hostile ones: the same masks as alone, every hostile request refused with
    one sentence, no traceback in the server's output, one log line per refusal."""
    cat = uploaded(url, "cat.jpg", CAT.read_bytes())
    good = json.dumps({"data": [payload(cat), 90, "[[320, 240, 1]]", "", "standin", True]})
    event, alone = call(url, "segment", good)
    assert event == "complete"
    capfd.readouterr()
    hostile = [json.dumps({"data": [payload(path), 0, "[[10, 10, 1]]", "", "standin", True]})
               for path in hostile_paths[:4]]
    hostile += [json.dumps({"data": [payload(cat), 0, "[[1, 2, Infinity]]", "", "standin", True]}),
                json.dumps({"data": [payload(cat), "1e999", "[[1, 2, 1]]", "", "standin", True]})]
    with caplog.at_level("INFO", logger="canon.app"), concurrent.futures.ThreadPoolExecutor(8) as pool:
        refused = [pool.submit(call, url, "segment", body) for body in hostile * 3]
        visitor = pool.submit(call, url, "segment", good)
        answers = [future.result() for future in refused]
        event, together = visitor.result()
    assert event == "complete"
    for branch in ("sam", "canonicalized"):
        got, _ = maskio.masks_from_coco(together[2][branch]["masks"])
        want, _ = maskio.masks_from_coco(alone[2][branch]["masks"])
        assert np.array_equal(got, want), branch
    for event, message in answers:
        assert event == "error"
        assert_one_sentence(message)
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err, (out + err)[-3000:]
    refusals = [record for record in caplog.records if record.getMessage().startswith("refused")]
    assert len(refusals) == len(answers) and all("\n" not in r.getMessage() for r in refusals)


def page_event(url: str, elem_id: str, trigger: str, data: list, timeout: float = 120) -> dict:
    """One event of the page as the browser sends it (the queue's join, then its event stream), with data an
    attacker chose; returns the process_completed message."""
    config = httpx.get(url + "config", timeout=30).json()
    component = next(c["id"] for c in config["components"] if c.get("props", {}).get("elem_id") == elem_id)
    fn_index = next(d["id"] for d in config["dependencies"] if [component, trigger] in d["targets"])
    session = secrets.token_hex(8)
    joined = httpx.post(url + "gradio_api/queue/join", timeout=timeout, json={
        "data": data, "fn_index": fn_index, "trigger_id": component, "session_hash": session, "event_data": None})
    assert joined.status_code == 200, joined.text[:300]
    with httpx.stream("GET", url + "gradio_api/queue/data", params={"session_hash": session},
                      timeout=timeout) as stream:
        for line in stream.iter_lines():
            if line.startswith("data: "):
                message = json.loads(line[len("data: "):])
                if message.get("msg") == "process_completed":
                    return message
    raise AssertionError("the event did not complete")


def test_the_page_reads_no_file_the_visitor_did_not_upload(url, hostile_paths):
    """The page's own photo event takes the same payloads; Gradio records a path in its folder that a request
    names among the upload box's files, so a second try with the same path must still be refused."""
    for path in hostile_paths[:8] + [hostile_paths[-3]] * 2:
        message = page_event(url, "upload", "upload", [None, payload(path), False])
        # Refused by Gradio's own check (a path outside its folder: an error alert) or by the app's (the status
        # line); the same sentence either way.
        shown = message["output"]["data"][STATUS] if message["success"] else message["output"]["error"]
        assert shown.removeprefix("⚠ ").lower() == f"{UPLOAD_REFUSAL}.", (path, shown)
    cat = uploaded(url, "cat.jpg", CAT.read_bytes())
    for tilt_stage in (False, {"path": "/etc/passwd"}):  # the tilt stage's box: a yes or no, anything else ignored
        message = page_event(url, "upload", "upload", [None, payload(cat), tilt_stage])
        assert message["output"]["data"][STATUS].startswith("Photo loaded"), message["output"]["data"][STATUS]
