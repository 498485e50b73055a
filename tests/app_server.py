"""The demo served on loopback with SAM-architecture stand-ins, for the gradio_client and browser tests."""

from __future__ import annotations

import contextlib
from pathlib import Path

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
