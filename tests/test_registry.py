"""Model registry and weight resolution, against a loopback stand-in for the Hub (never the real network)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from huggingface_hub import try_to_load_from_cache

from canon import registry
from canon.registry import ModelUnavailableError, resolve_canonicalizer_dir, resolve_sam_checkpoint
from tests.hub_server import HubServer, hub  # noqa: F401 (hub is a fixture)

ROOT = Path(__file__).resolve().parent.parent
SAM_REPO = "ybelkada/segment-anything"
SAM_FILE = "checkpoints/sam_vit_b_01ec64.pth"
STAND_IN = bytes(range(256)) * 16  # 4 KiB in place of a 375 MB checkpoint
OFFLINE_MESSAGE = (
    "SAM 'vit_b' is not on this machine and HF_HUB_OFFLINE is set: pass --sam PATH to a local"
    " sam_vit_b_01ec64.pth or put it in {weights}/, or unset HF_HUB_OFFLINE on a machine with network access."
)


@pytest.fixture(autouse=True)
def empty_weights(monkeypatch, tmp_path):
    """An empty weights/ folder, so that files shipped in the project never stand in for a download."""
    weights = tmp_path / "weights"
    weights.mkdir()
    monkeypatch.setattr(registry, "WEIGHTS_DIR", weights)
    return weights


@pytest.fixture
def hashes(monkeypatch):
    """Records every file registry.sha256_file hashes."""
    seen: list[str] = []
    real = registry.sha256_file

    def counting(path):
        seen.append(str(path))
        return real(path)

    monkeypatch.setattr(registry, "sha256_file", counting)
    return seen


def stand_in(hub: HubServer) -> registry.SamSpec:
    """Serve the stand-in bytes as SAM ViT-B and return the vit_b spec pinned to them."""
    digest = hub.add(SAM_REPO, SAM_FILE, STAND_IN)
    return dataclasses.replace(registry.sam_spec("vit_b"), sha256=digest, size=len(STAND_IN))


def fails(call, *args, **kwargs) -> str:
    """The message of the ModelUnavailableError that ``call`` raises, checked to be one sentence."""
    with pytest.raises(ModelUnavailableError) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message and message.endswith(".")
    return message


def hf_cache() -> Path:
    return Path(os.environ["HF_HUB_CACHE"])


def blobs() -> list[Path]:
    return sorted(hf_cache().glob("models--*/blobs/*"))


# --- registry ------------------------------------------------------------------------------------------------------


def test_registry_pins_the_three_sam_checkpoints():
    table = registry.load_registry()
    assert registry.sam_names() == ["vit_b", "vit_l", "vit_h"] == list(table["sam"])
    assert registry.default_sam() == "vit_b"
    assert registry.default_canonicalizer() in registry.canonicalizer_names()
    pinned = {name: registry.sam_spec(name).sha256 for name in registry.sam_names()}
    assert pinned == {
        "vit_b": "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
        "vit_l": "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
        "vit_h": "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
    }
    vit_b = registry.sam_spec("vit_b")
    assert (vit_b.repo_id, vit_b.filename, vit_b.revision, vit_b.size) == (SAM_REPO, SAM_FILE, "main", 375042383)
    assert registry.sam_spec("vit_h").size is None
    assert registry.REGISTRY_PATH == ROOT / "canon" / "weights" / "models.json"


def test_unknown_names_list_the_known_ones():
    assert "'vit_x'" in fails(registry.sam_spec, "vit_x")
    assert "vit_b, vit_l, vit_h" in fails(resolve_sam_checkpoint, "vit_x")
    assert "wrn-c4-paper" in fails(resolve_canonicalizer_dir, "nope")


# --- explicit paths ------------------------------------------------------------------------------------------------


def test_local_paths_are_used_as_is(hub, tmp_path, hashes):
    checkpoint = tmp_path / "my_sam.pth"
    checkpoint.write_bytes(b"not checked")
    folder = tmp_path / "my_canonicalizer"
    folder.mkdir()
    for name in registry.CANONICALIZER_FILES:
        (folder / name).write_bytes(b"{}")
    assert resolve_sam_checkpoint(str(checkpoint)) == checkpoint
    assert resolve_sam_checkpoint(checkpoint) == checkpoint
    assert resolve_canonicalizer_dir(str(folder)) == folder
    assert hashes == [] and hub.requests == []


def test_missing_paths_say_so(tmp_path):
    assert "no such file" in fails(resolve_sam_checkpoint, str(tmp_path / "sam_vit_b.pth"))
    assert "no such folder" in fails(resolve_canonicalizer_dir, str(tmp_path / "absent"))
    assert "lacks config.json and model.safetensors" in fails(resolve_canonicalizer_dir, str(tmp_path))


# --- weights/ ------------------------------------------------------------------------------------------------------


def test_weights_dir_comes_before_the_hub(hub, empty_weights):
    spec = stand_in(hub)
    shipped = empty_weights / "sam_vit_b_01ec64.pth"
    shipped.write_bytes(STAND_IN)
    assert resolve_sam_checkpoint(spec) == shipped
    shipped.write_bytes(STAND_IN[::-1])  # same size, other bytes
    message = fails(resolve_sam_checkpoint, spec)
    assert "does not match canon/weights/models.json" in message and f"--sam {shipped}" in message
    assert shipped.exists(), "a user's file is reported, never deleted"
    assert hub.requests == []


# --- the Hub -------------------------------------------------------------------------------------------------------


def test_download_is_verified_and_cached(hub, hashes):
    spec = stand_in(hub)
    path = resolve_sam_checkpoint(spec)
    assert path.read_bytes() == STAND_IN
    assert hf_cache() in path.parents and path.name == "sam_vit_b_01ec64.pth"
    assert len(hashes) == 1
    assert [method for method, _ in hub.requests] == ["HEAD", "HEAD", "GET"], hub.requests


def test_a_registry_file_can_name_the_stand_in(hub, tmp_path):
    table = registry.load_registry()
    table["sam"]["vit_b"].update(sha256=hub.add(SAM_REPO, SAM_FILE, STAND_IN), size=len(STAND_IN))
    path = tmp_path / "models.json"
    path.write_text(json.dumps(table))
    assert resolve_sam_checkpoint("vit_b", registry=path).read_bytes() == STAND_IN


def test_corrupt_download_is_refused_and_removed(hub):
    spec = stand_in(hub)
    hub.mode = "corrupt"
    message = fails(resolve_sam_checkpoint, spec)
    assert message.startswith(f"SAM 'vit_b' downloaded from {SAM_REPO} was corrupt")
    assert "removed from the cache: run again" in message
    assert blobs() == []
    assert try_to_load_from_cache(SAM_REPO, SAM_FILE) is None
    hub.mode = "ok"
    assert resolve_sam_checkpoint(spec).read_bytes() == STAND_IN


def test_cache_corrupted_later_is_removed(hub):
    spec = stand_in(hub)
    path = resolve_sam_checkpoint(spec)
    Path(os.path.realpath(path)).write_bytes(STAND_IN[::-1])  # same size: only the hash can tell
    message = fails(resolve_sam_checkpoint, spec)
    assert "in the Hugging Face cache was corrupt" in message and "has been removed" in message
    assert blobs() == [] and not os.path.lexists(path)


def test_hub_file_that_differs_from_the_pin_is_not_downloaded(hub):
    spec = dataclasses.replace(stand_in(hub), sha256="0" * 64)
    message = fails(resolve_sam_checkpoint, spec)
    assert "not the 000000000000… pinned in canon/weights/models.json" in message
    assert [method for method, _ in hub.requests] == ["HEAD"]


def test_cached_file_is_used_offline_without_any_request(hub, monkeypatch):
    spec = stand_in(hub)
    path = resolve_sam_checkpoint(spec)
    before = len(hub.requests)
    assert resolve_sam_checkpoint(spec) == path  # online: the cache comes before the Hub
    # Only the environment says offline: were the Hub still asked, the stand-in would count the request.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_sam_checkpoint(spec) == path
    assert len(hub.requests) == before


def test_offline_with_an_empty_cache_fails_fast(hub, monkeypatch, empty_weights):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    message = fails(resolve_sam_checkpoint, "vit_b")
    elapsed = time.perf_counter() - start
    assert message == OFFLINE_MESSAGE.format(weights=empty_weights)
    assert elapsed < 0.2
    assert hub.requests == []


def test_offline_fresh_process_fails_fast(hub, tmp_path):
    """HF_HUB_OFFLINE set before huggingface_hub is imported, as a user would set it."""
    script = (
        "import time\n"
        "from canon.registry import resolve_sam_checkpoint, ModelUnavailableError\n"
        "start = time.perf_counter()\n"
        "try:\n"
        "    resolve_sam_checkpoint('vit_b')\n"
        "except ModelUnavailableError as e:\n"
        "    print(f'{time.perf_counter() - start:.4f} {e}')\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True)
    wall = time.perf_counter() - start
    call_s, message = out.stdout.split(" ", 1)
    assert "is not on this machine and HF_HUB_OFFLINE is set" in message, out.stderr
    assert float(call_s) < 0.2
    assert wall < 10  # interpreter start and imports included
    assert hub.requests == []


def test_hf_endpoint_in_a_fresh_process(hub, tmp_path):
    """The honest path: HF_ENDPOINT set in the environment, huggingface_hub left unpatched."""
    spec = stand_in(hub)
    script = (
        "import dataclasses, sys\n"
        "from canon import registry\n"
        "spec = dataclasses.replace(registry.sam_spec('vit_b'), sha256=sys.argv[1], size=int(sys.argv[2]))\n"
        "print(registry.resolve_sam_checkpoint(spec))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", script, spec.sha256, str(spec.size)], env=env, cwd=tmp_path, capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()).read_bytes() == STAND_IN
    assert len(hub.requests) == 3


@pytest.mark.parametrize(
    ("repo_id", "filename", "revision", "expected"),
    [
        ("nobody/nothing", SAM_FILE, "main", "the Hub has no repo nobody/nothing"),
        (SAM_REPO, "checkpoints/missing.pth", "main", "has no file checkpoints/missing.pth at revision 'main'"),
        (SAM_REPO, SAM_FILE, "v9", f"the Hub repo {SAM_REPO} has no revision 'v9'"),
    ],
)
def test_not_found_messages(hub, repo_id, filename, revision, expected):
    spec = dataclasses.replace(stand_in(hub), repo_id=repo_id, filename=filename, revision=revision)
    start = time.perf_counter()
    message = fails(resolve_sam_checkpoint, spec)
    assert time.perf_counter() - start < 2
    assert message.startswith("SAM 'vit_b' cannot be downloaded because") and expected in message
    assert "pass --sam PATH" in message
    assert len(hub.requests) == 1


def test_server_error_message_without_retries(hub):
    spec = stand_in(hub)
    hub.mode = "error"
    start = time.perf_counter()
    message = fails(resolve_sam_checkpoint, spec)
    assert time.perf_counter() - start < 2
    assert f"the Hub at {hub.url} answered HTTP 500" in message and "try again later" in message
    assert len(hub.requests) == 1


def test_unreachable_hub_fails_fast(hub):
    spec = stand_in(hub)
    hub.stop()  # the port is closed: connections are refused, as with a Hub behind a firewall that rejects
    start = time.perf_counter()
    message = fails(resolve_sam_checkpoint, spec)
    assert time.perf_counter() - start < 2
    assert f"the Hub at {hub.url} cannot be reached" in message


def test_silent_hub_times_out(hub, monkeypatch):
    spec = stand_in(hub)
    hub.mode = "hang"  # accepts the connection and never answers, as with a Hub behind a firewall that drops
    monkeypatch.setattr(registry, "HUB_TIMEOUT_S", 0.3)
    start = time.perf_counter()
    message = fails(resolve_sam_checkpoint, spec)
    assert time.perf_counter() - start < 2
    assert "did not answer within 0.3 s" in message
    assert len(hub.requests) == 1


def test_a_trickling_hub_is_bounded_in_total_time_and_downloads_once(hub, monkeypatch):
    """Each byte arrives well within the per-read timeout, so only a deadline on the whole download ends the wait;
    the download goes on in the background, and a second call waits for it rather than starting another."""
    spec = stand_in(hub)
    hub.mode, hub.trickle_s = "trickle", 0.2
    monkeypatch.setenv(registry.ENV_HUB_DEADLINE, "1.5")
    start = time.perf_counter()
    message = fails(resolve_sam_checkpoint, spec)
    assert 1.5 <= time.perf_counter() - start < 30  # the whole trickle would take 800 s
    assert "could not be downloaded from ybelkada/segment-anything within 1.5 s" in message
    assert f"raise {registry.ENV_HUB_DEADLINE}" in message
    with pytest.raises(ModelUnavailableError) as info:
        resolve_sam_checkpoint(spec)
    assert "still being downloaded" in info.value.public and "/" not in info.value.public
    assert sum(method == "GET" for method, _ in hub.requests) == 1  # one download for both calls
    hub.stop()  # ends the trickle; the background download fails and leaves nothing behind in flight
    deadline = time.monotonic() + 10
    while registry._DOWNLOADS and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not registry._DOWNLOADS


@pytest.mark.parametrize("value", ["0", "-3", "soon", "nan"])
def test_a_bad_download_deadline_is_one_sentence(hub, monkeypatch, value):
    spec = stand_in(hub)
    monkeypatch.setenv(registry.ENV_HUB_DEADLINE, value)
    assert "is not a positive number of seconds" in fails(resolve_sam_checkpoint, spec)


def test_unwritable_cache_message(hub, tmp_path):
    spec = stand_in(hub)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    message = fails(resolve_sam_checkpoint, spec, cache_dir=blocker / "cache")
    assert f"cannot be saved in the Hugging Face cache {blocker / 'cache'}" in message
    assert "set HF_HUB_CACHE to a writable folder" in message


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_cache_message(hub, tmp_path):
    spec = stand_in(hub)
    cache = tmp_path / "read-only"
    cache.mkdir(mode=0o555)
    try:
        message = fails(resolve_sam_checkpoint, spec, cache_dir=cache)
    finally:
        cache.chmod(0o755)
    assert "Permission denied" in message and "set HF_HUB_CACHE to a writable folder" in message


# --- checksum stamps -----------------------------------------------------------------------------------------------


def test_stamp_spares_rehashing_until_the_file_changes(hub, hashes):
    spec = stand_in(hub)
    path = resolve_sam_checkpoint(spec)
    assert len(hashes) == 1
    stamps = list((Path(os.environ["CANON_CACHE_DIR"]) / "checksums").glob("*.json"))
    assert len(stamps) == 1 and json.loads(stamps[0].read_text())["sha256"] == spec.sha256
    for _ in range(3):
        resolve_sam_checkpoint(spec)
    assert len(hashes) == 1
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))  # touched: the stamp no longer vouches
    resolve_sam_checkpoint(spec)
    assert len(hashes) == 2


# --- canonicalizers ------------------------------------------------------------------------------------------------


def serve_canonicalizer(hub: HubServer, repo_id: str) -> dict[str, dict]:
    """Serve a stand-in canonicalizer folder; return its pins (name -> sha256, size)."""
    files = {"config.json": b'{"arch": "stand-in"}', "model.safetensors": STAND_IN}
    return {
        name: {"sha256": hub.add(repo_id, name, data, lfs=name.endswith(".safetensors")), "size": len(data)}
        for name, data in files.items()
    }


def test_canonicalizer_from_the_hub(hub):
    pins = serve_canonicalizer(hub, "someone/wrn")
    spec = dataclasses.replace(registry.canonicalizer_spec("wrn-c4-paper"), repo_id="someone/wrn", files=pins)
    hub.mode = "corrupt"
    assert "was corrupt (config.json has sha256" in fails(resolve_canonicalizer_dir, spec)
    assert blobs() == []
    hub.mode = "ok"
    folder = resolve_canonicalizer_dir(spec)
    assert sorted(p.name for p in folder.iterdir()) == sorted(registry.CANONICALIZER_FILES)
    assert (folder / "model.safetensors").read_bytes() == STAND_IN


def test_canonicalizer_without_repo_or_local_copy(hub):
    message = fails(resolve_canonicalizer_dir, "wrn-c4-paper")
    assert "names no Hub repo" in message and "CANON_CANONICALIZER_REPO" in message


def test_canonicalizer_repo_override(hub, monkeypatch):
    serve_canonicalizer(hub, "env/wrn")
    serve_canonicalizer(hub, "arg/wrn")
    monkeypatch.setenv("CANON_CANONICALIZER_REPO", "env/wrn")
    spec = registry.canonicalizer_spec("wrn-c4-paper")
    assert (spec.repo_id, spec.revision, spec.local_dir, dict(spec.files)) == ("env/wrn", "main", None, {})
    assert resolve_canonicalizer_dir("wrn-c4-paper").parent.parent.name == "models--env--wrn"
    via_arg = resolve_canonicalizer_dir("wrn-c4-paper", repo_id="arg/wrn")
    assert via_arg.parent.parent.name == "models--arg--wrn"
    monkeypatch.setenv("CANON_CANONICALIZER_REVISION", "v2")
    assert registry.canonicalizer_spec("wrn-c4-paper").revision == "v2"
    assert registry.canonicalizer_spec("wrn-c4-paper", repo_id="arg/wrn").revision == "main"


def test_environment_override_is_for_the_default_only(monkeypatch):
    table = registry.load_registry()
    small = {"local_dir": "small", "repo_id": "org/small", "revision": "main", "files": {}}
    table["canonicalizers"]["small"] = small
    monkeypatch.setenv("CANON_CANONICALIZER_REPO", "env/wrn")
    assert registry.canonicalizer_spec("small", registry=table).repo_id == "org/small"
    assert registry.canonicalizer_spec("wrn-c4-paper", registry=table).repo_id == "env/wrn"


def test_a_local_checkpoint_is_recognised_by_its_pinned_sha256(tmp_path):
    table = registry.load_registry()
    copy = tmp_path / "my_copy.pth"
    copy.write_bytes(STAND_IN)
    table["sam"]["vit_l"].update(sha256=hashlib.sha256(STAND_IN).hexdigest(), size=None)
    assert registry.registered_sam(copy, registry=table) == "vit_l"
    table["sam"]["vit_l"]["size"] = len(STAND_IN) + 1  # a known size that differs: not even hashed
    assert registry.registered_sam(copy, registry=table) is None
    assert registry.registered_sam(tmp_path / "absent.pth", registry=table) is None
    assert registry.registered_sam(copy) is None  # the real pins: not a SAM checkpoint


def test_availability_is_found_without_the_network(hub, monkeypatch, empty_weights):
    spec = stand_in(hub)
    table = registry.load_registry()
    table["sam"]["vit_b"].update(repo_id=spec.repo_id, filename=spec.filename, sha256=spec.sha256, size=spec.size)
    assert registry.sam_availability("vit_b", registry=table) == "hub"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert registry.sam_availability("vit_b", registry=table) == "offline"
    monkeypatch.delenv("HF_HUB_OFFLINE")
    resolve_sam_checkpoint(spec)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert registry.sam_availability("vit_b", registry=table) == "here"
