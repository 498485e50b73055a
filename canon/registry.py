"""Model registry (``canon/weights/models.json``) and resolution of a model name to verified files on this machine.

A SAM checkpoint or a canonicalizer folder is looked for, in order:

1. at an explicit local path, used as is (the user chose it, so no checksum);
2. in ``canon/weights/`` (SAM: ``canon/weights/<file name>``; canonicalizer: ``canon/weights/<local_dir>/``);
3. in the Hugging Face cache;
4. on the Hugging Face Hub.

Files found by 2-4 must match the sha256 (and size) the registry pins. Hashing a 2.5 GB checkpoint takes seconds,
so a successful check leaves a stamp (path, size, mtime, sha256) under ``CANON_CACHE_DIR`` (default
``~/.cache/canon``) and later runs trust the unchanged file. A cached file that fails its check is deleted from the
Hugging Face cache, so that no later run trusts it either. Every failure is a :class:`ModelUnavailableError` whose
message is one sentence naming the model and the fix.

This module only finds files: it never unpickles or loads them.
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import hashlib
import json
import logging
import math
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path, PurePosixPath

import httpx2
from huggingface_hub import constants as hf_constants
from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_download, hf_hub_url, try_to_load_from_cache
from huggingface_hub.errors import (
    FileMetadataError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from .runtime import sha256_file

log = logging.getLogger(__name__)

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
REGISTRY_PATH = WEIGHTS_DIR / "models.json"
CANONICALIZER_FILES = ("config.json", "model.safetensors")
# Seconds one Hub request may take. huggingface_hub alone retries an unreachable Hub for 23 s (5 back-offs), and up
# to a minute per try when packets are dropped; HF_HUB_ETAG_TIMEOUT, when set, wins as it does in huggingface_hub.
HUB_TIMEOUT_S = 5.0
# Seconds a whole download may take, whatever the pace of the Hub (a trickle resets every per-read timeout):
# HUB_DEADLINE_S, and one more second for every HUB_MIN_RATE bytes the file is pinned at. CANON_HUB_DEADLINE_S wins.
HUB_DEADLINE_S = 60.0
HUB_MIN_RATE = 4 * 2**20
ENV_HUB_DEADLINE = "CANON_HUB_DEADLINE_S"
ENV_CACHE_DIR = "CANON_CACHE_DIR"
ENV_CANONICALIZER_REPO = "CANON_CANONICALIZER_REPO"
ENV_CANONICALIZER_REVISION = "CANON_CANONICALIZER_REVISION"

Registry = Mapping | str | os.PathLike | None


class ModelUnavailableError(RuntimeError):
    """A model's weights cannot be found, fetched or trusted; the message names the model and what to do, for the
    person who runs the program (it may name paths, options and environment variables). ``public`` says the same
    to a visitor of a served app, without them."""

    def __init__(self, message: str, public: str | None = None):
        super().__init__(message)
        self.public = public or "the model's weights are not available on this server"


@dataclass(frozen=True)
class SamSpec:
    """A SAM checkpoint: the Hub file that holds it and the sha256 (and size, when known) it must have."""

    name: str
    repo_id: str
    filename: str
    revision: str
    sha256: str | None
    size: int | None = None


@dataclass(frozen=True)
class CanonicalizerSpec:
    """A canonicalizer folder (``config.json`` + ``model.safetensors``), shipped in ``canon/weights/<local_dir>`` and/or
    published in a Hub repo; ``files`` maps a file name to its pinned ``{"sha256", "size"}``."""

    name: str
    local_dir: str | None
    repo_id: str | None
    revision: str
    files: Mapping[str, Mapping] = field(default_factory=dict)


# --- registry ------------------------------------------------------------------------------------------------------


def load_registry(path: str | os.PathLike | None = None) -> dict:
    """The parsed registry: ``canon/weights/models.json``, or the file at ``path``."""
    with open(path or REGISTRY_PATH, encoding="utf-8") as f:
        return json.load(f)


def _registry(registry: Registry) -> Mapping:
    return registry if isinstance(registry, Mapping) else load_registry(registry)


def sam_names(*, registry: Registry = None) -> list[str]:
    """Names of the SAM checkpoints in the registry, in its order (smallest first)."""
    return list(_registry(registry)["sam"])


def canonicalizer_names(*, registry: Registry = None) -> list[str]:
    """Names of the canonicalizers in the registry."""
    return list(_registry(registry)["canonicalizers"])


def default_sam(*, registry: Registry = None) -> str:
    """Name of the SAM checkpoint used when none is asked for."""
    return _registry(registry)["default_sam"]


def default_canonicalizer(*, registry: Registry = None) -> str:
    """Name of the canonicalizer used when none is asked for."""
    return _registry(registry)["default_canonicalizer"]


def sam_spec(name: str, *, registry: Registry = None) -> SamSpec:
    """The registry entry of SAM checkpoint ``name``."""
    models = _registry(registry)["sam"]
    if name not in models:
        raise ModelUnavailableError(
            f"Unknown SAM model {name!r}: choose one of {', '.join(models)} (canon/weights/models.json)"
            " or pass the path of a SAM .pth checkpoint."
        )
    return SamSpec(name=name, **models[name])


def canonicalizer_spec(
    name: str, *, repo_id: str | None = None, revision: str | None = None, registry: Registry = None
) -> CanonicalizerSpec:
    """The registry entry of canonicalizer ``name``, possibly pointed at another Hub source.

    For the default canonicalizer, ``CANON_CANONICALIZER_REPO`` / ``CANON_CANONICALIZER_REVISION`` choose the source;
    the ``repo_id`` / ``revision`` arguments, when given, replace both. A new repo without a revision means ``main``.
    Files from another source are not the ones the registry describes, so the returned spec then has no
    ``local_dir`` and no pinned ``files``: what the user pointed at is used unchecked, as a local path would be.
    """
    reg = _registry(registry)
    models = reg["canonicalizers"]
    if name not in models:
        raise ModelUnavailableError(
            f"Unknown canonicalizer {name!r}: choose one of {', '.join(models)} (canon/weights/models.json)"
            " or pass a folder holding config.json and model.safetensors."
        )
    spec = CanonicalizerSpec(name=name, **models[name])
    if repo_id is None and revision is None and name == reg["default_canonicalizer"]:
        repo_id = os.environ.get(ENV_CANONICALIZER_REPO) or None
        revision = os.environ.get(ENV_CANONICALIZER_REVISION) or None
    return _redirect(spec, repo_id, revision)


def _redirect(spec: CanonicalizerSpec, repo_id: str | None, revision: str | None) -> CanonicalizerSpec:
    if repo_id is None and revision is None:
        return spec
    return replace(
        spec,
        local_dir=None,
        files={},
        repo_id=repo_id or spec.repo_id,
        revision=revision or ("main" if repo_id else spec.revision),
    )


# --- resolution ----------------------------------------------------------------------------------------------------


def resolve_sam_checkpoint(
    name_or_path: str | os.PathLike | SamSpec, *, cache_dir: str | os.PathLike | None = None, registry: Registry = None
) -> Path:
    """Path of a SAM ``.pth`` checkpoint given a registry name, a spec or a local path (see the module docstring)."""
    if isinstance(name_or_path, SamSpec):
        spec = name_or_path
    else:
        reg = _registry(registry)
        path = _as_path(name_or_path, reg["sam"])
        if path is not None:
            if path.is_file():
                return path
            problem = "is a folder, not a checkpoint file" if path.exists() else "does not exist (no such file)"
            raise ModelUnavailableError(
                f"SAM checkpoint {path} {problem}: check the path, or name a registered model"
                f" ({', '.join(reg['sam'])})."
            )
        spec = sam_spec(name_or_path, registry=reg)

    label = f"SAM {spec.name!r}"
    basename = PurePosixPath(spec.filename).name
    hint = f"pass --sam PATH to a local {basename} or put it in {WEIGHTS_DIR}/"
    pin = {"sha256": spec.sha256, "size": spec.size}
    local = WEIGHTS_DIR / basename
    if local.is_file():
        _check_local(label, local, pin, f"--sam {local}")
        return local
    (path,) = _resolve_remote(label, hint, spec.repo_id, spec.revision, {spec.filename: pin}, cache_dir)
    return path


def sam_availability(name: str, *, cache_dir: str | os.PathLike | None = None, registry: Registry = None) -> str:
    """Where the registered SAM ``name`` would come from, found without touching the network: ``"here"`` (in the
    weights folder or the Hugging Face cache), ``"hub"`` (downloaded on first use) or ``"offline"`` (neither, and
    HF_HUB_OFFLINE is set). A file found is checked only when it is loaded."""
    spec = sam_spec(name, registry=registry)
    if (WEIGHTS_DIR / PurePosixPath(spec.filename).name).is_file() or isinstance(
            try_to_load_from_cache(spec.repo_id, spec.filename, cache_dir=cache_dir, revision=spec.revision), str):
        return "here"
    return "offline" if _offline() else "hub"


def registered_sam(path: str | os.PathLike, *, registry: Registry = None) -> str | None:
    """The name of the registered SAM whose pinned sha256 the checkpoint at ``path`` has, or None (a file whose
    size differs from a known pinned size is not hashed)."""
    path = Path(path)
    if not path.is_file():
        return None
    size = path.stat().st_size
    candidates = [name for name, entry in _registry(registry)["sam"].items()
                  if entry.get("sha256") and entry.get("size") in (None, size)]
    if not candidates:
        return None
    digest = sha256_file(path)
    return next((name for name in candidates if _registry(registry)["sam"][name]["sha256"] == digest), None)


def resolve_canonicalizer_dir(
    name_or_path: str | os.PathLike | CanonicalizerSpec,
    *,
    repo_id: str | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    registry: Registry = None,
) -> Path:
    """Folder holding a canonicalizer's ``config.json`` and ``model.safetensors``, given a registry name, a spec or
    a local folder; ``repo_id`` / ``revision`` fetch it from another Hub source (see :func:`canonicalizer_spec`)."""
    if isinstance(name_or_path, CanonicalizerSpec):
        spec = _redirect(name_or_path, repo_id, revision)
    else:
        reg = _registry(registry)
        path = _as_path(name_or_path, reg["canonicalizers"])
        if path is not None:
            if not path.is_dir():
                problem = "is a file, not a folder" if path.exists() else "does not exist (no such folder)"
                raise ModelUnavailableError(
                    f"Canonicalizer folder {path} {problem}: pass a folder holding config.json and"
                    f" model.safetensors, or name a registered canonicalizer ({', '.join(reg['canonicalizers'])})."
                )
            missing = [name for name in CANONICALIZER_FILES if not (path / name).is_file()]
            if missing:
                raise ModelUnavailableError(
                    f"Canonicalizer folder {path} lacks {' and '.join(missing)}: pass a folder holding"
                    " config.json and model.safetensors."
                )
            return path
        spec = canonicalizer_spec(name_or_path, repo_id=repo_id, revision=revision, registry=reg)

    label = f"Canonicalizer {spec.name!r}"
    hint = "pass --canonicalizer DIR to a local folder holding config.json and model.safetensors"
    if spec.local_dir:
        local = WEIGHTS_DIR / spec.local_dir
        hint += f" or put them in {local}/"
        if all((local / name).is_file() for name in CANONICALIZER_FILES):
            for name, pin in spec.files.items():
                _check_local(label, local / name, pin, f"--canonicalizer {local}")
            return local
    if spec.repo_id is None:
        raise ModelUnavailableError(
            f"{label} is not on this machine and canon/weights/models.json names no Hub repo for it: {hint},"
            f" or set {ENV_CANONICALIZER_REPO} to a Hub repo that holds them."
        )
    pins = {name: spec.files.get(name, {}) for name in CANONICALIZER_FILES}
    paths = _resolve_remote(label, hint, spec.repo_id, spec.revision, pins, cache_dir)
    return paths[0].parent


def _as_path(name_or_path: str | os.PathLike, names: Mapping) -> Path | None:
    """The local path ``name_or_path`` means, or None when it is meant as a model name (known or not)."""
    if isinstance(name_or_path, os.PathLike):
        return Path(name_or_path).expanduser()
    if name_or_path in names:
        return None
    path = Path(name_or_path).expanduser()
    looks_like_path = (
        "/" in name_or_path
        or os.sep in name_or_path
        or name_or_path.startswith(("~", "."))
        or PurePosixPath(name_or_path).suffix != ""
    )
    return path if looks_like_path or path.exists() else None


def _resolve_remote(
    label: str, hint: str, repo_id: str, revision: str, pins: Mapping[str, Mapping], cache_dir
) -> list[Path]:
    """Steps 3 and 4 for the files of one repo: all from the Hugging Face cache, else from the Hub; all verified."""
    cached = [try_to_load_from_cache(repo_id, name, cache_dir=cache_dir, revision=revision) for name in pins]
    if all(isinstance(hit, str) for hit in cached):
        paths = [Path(hit) for hit in cached]
        for path, pin in zip(paths, pins.values()):
            _check_cached(label, hint, path, pin, "in the Hugging Face cache")
        return paths
    if _offline():
        raise ModelUnavailableError(
            f"{label} is not on this machine and HF_HUB_OFFLINE is set: {hint},"
            " or unset HF_HUB_OFFLINE on a machine with network access."
        )
    paths = []
    for name, pin in pins.items():
        path = _download(label, hint, repo_id, name, revision, pin, cache_dir)
        _check_cached(label, hint, path, pin, f"downloaded from {repo_id}")
        paths.append(path)
    return paths


def _offline() -> bool:
    # huggingface_hub reads HF_HUB_OFFLINE once, at import: reading it again honours a value set since.
    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().upper()
    return hf_constants.is_offline_mode() or flag in {"1", "ON", "YES", "TRUE"}


def _hub_timeout() -> float:
    if hf_constants.HF_HUB_ETAG_TIMEOUT != hf_constants.DEFAULT_ETAG_TIMEOUT:
        return float(hf_constants.HF_HUB_ETAG_TIMEOUT)
    return HUB_TIMEOUT_S


def _download(label: str, hint: str, repo_id: str, filename: str, revision: str, pin: Mapping, cache_dir) -> Path:
    """Fetch one file into the Hugging Face cache within :func:`_hub_deadline`; fail fast when the Hub cannot serve
    it. Past the deadline the caller gets a :class:`ModelUnavailableError` while the download goes on in the
    background, one per file: a later call waits for the same one instead of starting another."""
    deadline = _hub_deadline(pin.get("size"))
    key = (repo_id, filename, revision, str(cache_dir))
    with _DOWNLOADS_LOCK:
        future = _DOWNLOADS.get(key)
        if future is None:
            future = concurrent.futures.Future()
            _DOWNLOADS[key] = future
            fetch = partial(_fetch, label, hint, repo_id, filename, revision, pin.get("sha256"), cache_dir)
            # In the caller's context, so that a progress display that follows tqdm (Gradio's) still sees it.
            threading.Thread(target=contextvars.copy_context().run, args=(_settle, future, key, fetch),
                             name=f"download {filename}", daemon=True).start()
    try:
        return future.result(timeout=deadline)
    except concurrent.futures.TimeoutError:
        raise ModelUnavailableError(
            f"{label} could not be downloaded from {repo_id} within {deadline:g} s (the Hub answers too slowly):"
            f" the download goes on in the background, so try again in a few minutes, or raise"
            f" {ENV_HUB_DEADLINE}, or {hint}.",
            public=f"{label} is still being downloaded by this server; try again in a few minutes",
        ) from None


_DOWNLOADS: dict[tuple, concurrent.futures.Future] = {}
_DOWNLOADS_LOCK = threading.Lock()


def _settle(future: concurrent.futures.Future, key: tuple, fetch) -> None:
    """Run ``fetch`` and hand its path, or its error, to ``future``; the file is then no longer in flight."""
    try:
        result = fetch()
    except BaseException as exc:  # noqa: BLE001 -- handed on to every caller waiting for the future
        with _DOWNLOADS_LOCK:
            _DOWNLOADS.pop(key, None)
        future.set_exception(exc)
    else:
        with _DOWNLOADS_LOCK:
            _DOWNLOADS.pop(key, None)
        future.set_result(result)


def _hub_deadline(size: int | None) -> float:
    """Seconds a download of a file of ``size`` bytes may take (see HUB_DEADLINE_S)."""
    text = os.environ.get(ENV_HUB_DEADLINE, "").strip()
    if text:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not math.isfinite(value) or value <= 0:
            raise ModelUnavailableError(f"{ENV_HUB_DEADLINE}={text[:20]!r} is not a positive number of seconds.")
        return value
    return HUB_DEADLINE_S + (size or 0) / HUB_MIN_RATE


def _fetch(label: str, hint: str, repo_id: str, filename: str, revision: str, sha256: str | None, cache_dir) -> Path:
    """One file into the Hugging Face cache, failing within the Hub timeout when the Hub cannot serve it."""
    timeout = _hub_timeout()
    try:
        # One HEAD without retries first: hf_hub_download retries a failed HEAD for 23 s or more before giving up.
        meta = get_hf_file_metadata(hf_hub_url(repo_id, filename, revision=revision), timeout=timeout)
        etag = (meta.etag or "").lower()
        # An LFS file's ETag is its sha256: a Hub file that moved on is refused before gigabytes are fetched.
        if sha256 and len(etag) == 64 and etag != sha256.lower():
            raise ModelUnavailableError(
                f"{label} cannot be used because {filename} at revision {revision!r} of {repo_id} has sha256"
                f" {etag[:12]}…, not the {sha256[:12]}… pinned in canon/weights/models.json: pin the revision that"
                f" matches in canon/weights/models.json, or {hint}."
            )
        return Path(
            hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache_dir, etag_timeout=timeout)
        )
    except (httpx2.HTTPError, OSError) as exc:
        raise _hub_error(exc, label, hint, repo_id, filename, revision, cache_dir, timeout) from exc


def _hub_error(
    exc: Exception, label: str, hint: str, repo_id: str, filename: str, revision: str, cache_dir, timeout: float
) -> ModelUnavailableError:
    """One sentence saying why the Hub could not deliver the file, and what to do about it."""
    hub = hf_constants.ENDPOINT
    if isinstance(exc, RevisionNotFoundError):
        why = f"the Hub repo {repo_id} has no revision {revision!r}: fix the revision in canon/weights/models.json"
    elif isinstance(exc, RemoteEntryNotFoundError):
        why = f"the Hub repo {repo_id} has no file {filename} at revision {revision!r}: fix canon/weights/models.json"
    elif isinstance(exc, RepositoryNotFoundError):
        why = (
            f"the Hub has no repo {repo_id} (or it is private or gated): fix canon/weights/models.json,"
            " log in with `hf auth login`"
        )
    elif isinstance(exc, HfHubHTTPError):
        status = getattr(exc.response, "status_code", None)
        if status is not None and status >= 500:
            why = f"the Hub at {hub} answered HTTP {status} (a failure on its side): try again later"
        else:
            why = f"the Hub at {hub} answered HTTP {status}: check your access to {repo_id} (`hf auth login`)"
    elif isinstance(exc, OfflineModeIsEnabled):
        why = "HF_HUB_OFFLINE is set: unset it on a machine with network access"
    elif isinstance(exc, httpx2.TimeoutException):
        why = f"the Hub at {hub} did not answer within {timeout:g} s: check the network or raise HF_HUB_ETAG_TIMEOUT"
    elif isinstance(exc, (httpx2.HTTPError, LocalEntryNotFoundError)):
        reason = _first_line(exc.__cause__ or exc)
        why = f"the Hub at {hub} cannot be reached ({reason}): check the network, proxy and HF_ENDPOINT"
    elif isinstance(exc, FileMetadataError):
        why = f"{hub} does not answer like the Hugging Face Hub (no commit or ETag header): check HF_ENDPOINT"
    elif exc.errno is not None:
        cache = cache_dir or hf_constants.HF_HUB_CACHE
        why = (
            f"it cannot be saved in the Hugging Face cache {cache} ({exc.strerror}):"
            " set HF_HUB_CACHE to a writable folder with enough space"
        )
    else:
        why = f"the download broke off ({_first_line(exc)}): run again"
    return ModelUnavailableError(f"{label} cannot be downloaded because {why}, or {hint}.")


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


# --- verification --------------------------------------------------------------------------------------------------


def _check_local(label: str, path: Path, pin: Mapping, flag: str) -> None:
    """Verify a file in canon/weights/; a mismatch is the user's file, so it is reported, never deleted."""
    reason = _mismatch(path, pin.get("sha256"), pin.get("size"))
    if reason is not None:
        raise ModelUnavailableError(
            f"{label} cannot be used because {path} does not match canon/weights/models.json ({reason}):"
            f" replace or delete it, or pass {flag} to use it unchecked."
        )


def _check_cached(label: str, hint: str, path: Path, pin: Mapping, origin: str) -> None:
    """Verify a file in the Hugging Face cache and delete it when it fails, so that no later run trusts it."""
    reason = _mismatch(path, pin.get("sha256"), pin.get("size"))
    if reason is None:
        return
    if _evict(path):
        raise ModelUnavailableError(
            f"{label} {origin} was corrupt ({reason}) and has been removed from the cache:"
            f" run again to download it afresh, or {hint}."
        )
    raise ModelUnavailableError(
        f"{label} {origin} is corrupt ({reason}) and could not be removed: delete {os.path.realpath(path)}"
        f" and {path}, then run again, or {hint}."
    )


def _evict(path: Path) -> bool:
    """Delete a cached file: the snapshot entry and the blob it links to."""
    blob = os.path.realpath(path)
    try:
        os.unlink(path)
        if os.path.lexists(blob):
            os.unlink(blob)
    except OSError:
        return False
    return True


def _mismatch(path: Path, sha256: str | None, size: int | None) -> str | None:
    """Why ``path`` is not the pinned file, or None when it is; hashes only when no stamp vouches for the file."""
    real = Path(os.path.realpath(path))
    try:
        stat = real.stat()
    except FileNotFoundError:
        return f"{path.name} is missing"
    if size is not None and stat.st_size != size:
        return f"{path.name} has {stat.st_size} bytes, expected {size}"
    if not sha256:
        return None
    stamp = {"path": str(real), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha256.lower()}
    stamp_path = _stamp_path(real)
    try:
        if json.loads(stamp_path.read_text(encoding="utf-8")) == stamp:
            return None
    except (OSError, ValueError):
        pass  # no stamp, or an unreadable one: hash
    actual = sha256_file(real)
    if actual != stamp["sha256"]:
        return f"{path.name} has sha256 {actual[:12]}…, expected {sha256[:12]}…"
    _write_stamp(stamp_path, stamp)
    return None


def _stamp_path(real: Path) -> Path:
    cache = Path(os.environ.get(ENV_CACHE_DIR) or "~/.cache/canon").expanduser()
    return cache / "checksums" / f"{hashlib.sha256(str(real).encode()).hexdigest()[:32]}.json"


def _write_stamp(stamp_path: Path, stamp: dict) -> None:
    """Record a successful check; a stamp that cannot be written only costs a re-hash next time."""
    try:
        stamp_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = stamp_path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(stamp), encoding="utf-8")
        os.replace(tmp, stamp_path)  # atomic: a concurrent run reads the old stamp or the new one, never half
    except OSError as exc:
        log.warning("cannot write checksum stamp %s (%s): %s will be hashed again", stamp_path, exc, stamp["path"])


class PublishError(RuntimeError):
    """Publishing failed; the message says why and what to do, in one sentence."""


def publish_canonicalizer(name_or_folder: str, repo_id: str, private: bool = False) -> tuple[Path, str]:
    """Push a canonicalizer folder (a name in :data:`WEIGHTS_DIR` or a local folder with ``config.json`` and
    ``model.safetensors``, its model card included) to the Hub repo ``repo_id``; returns the folder and the commit.
    Reads local files only: a Hub override in the environment must not redirect the source."""
    folder = Path(name_or_folder) if Path(name_or_folder).is_dir() else WEIGHTS_DIR / name_or_folder
    if not all((folder / name).is_file() for name in CANONICALIZER_FILES):
        raise PublishError(f"{name_or_folder} is neither a model folder nor a name in canon/weights/ (config.json "
                           f"and model.safetensors are needed)")
    api = HfApi()
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        commit = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                                   commit_message=f"Upload canonicalizer {name_or_folder}")
    except Exception as error:  # network, auth and Hub errors come in many types; all end the same way here
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:160]
        raise PublishError(f"publishing to {repo_id} failed ({reason}); log in with `hf auth login` or set "
                           f"HF_TOKEN, and check the network") from None
    return folder, str(commit)
