"""The demo served on loopback with SAM-architecture stand-ins, for the gradio_client and browser tests."""

from __future__ import annotations

import contextlib
import hashlib
import shutil
from pathlib import Path

import gradio as gr
from gradio.utils import get_upload_folder

from canon.canonicalizer import Canonicalizer
from canon.demo import Models


def standin_models(canonicalizer: Canonicalizer, sam_path: Path, **sources) -> Models:
    """The paper canonicalizer and the stand-in SAM, offered as "standin" and loaded on first use through the real
    path (:meth:`SamBackend.load` of a local ``.pth``); ``sources`` adds other choices."""
    return Models(canonicalizer, {"standin": str(sam_path), **sources}, device="cpu")


@contextlib.contextmanager
def serve(models: Models, **build_options):
    """Yield the URL of ``app.build_demo(models)`` launched in this process on 127.0.0.1 (a free port from 7860)."""
    import app

    demo = app.build_demo(models, **build_options)
    _, url, _ = app.launch(demo, server_name="127.0.0.1", prevent_thread_lock=True, quiet=True)
    try:
        yield url
    finally:
        demo.close()


def received(handlers, path: str | Path) -> dict:
    """The file payload of ``path`` as a visitor's upload reaches ``handlers`` (an ``app.Handlers``): the file copied
    into Gradio's upload folder, as Gradio's upload route does, and recorded as received by this app."""
    if handlers.uploads.demo is None:
        handlers.uploads.bind(gr.Blocks())
    data = Path(path).read_bytes()
    folder = Path(get_upload_folder()) / hashlib.sha256(data).hexdigest()
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / Path(path).name
    if not target.exists():
        shutil.copyfile(path, target)
    handlers.uploads.demo.upload_file_set.add(str(target))
    return {"path": str(target), "meta": {"_type": "gradio.FileData"}}
