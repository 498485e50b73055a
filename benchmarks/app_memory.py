"""Peak memory and request time of ``app.py`` serving one click, in a child process:
``python -m benchmarks.app_memory --sam vit_b`` prints a Markdown row (and ``--json`` writes the figures)."""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from canon.images import load_image
from canon.segmenter import SAM_ARCHITECTURES, build_sam

REPO = Path(__file__).resolve().parents[1]
APP_PHOTO = REPO / "examples" / "animals_horse.jpg"


def app_peak_memory(sam_model: str = "vit_b", photo: Path = APP_PHOTO, angle: float = 90.0,
                    timeout_s: float = 600.0) -> dict:
    """Peak memory of the real app serving one request with ``sam_model``: ``app.py`` runs in a child process with
    a random-weight checkpoint of that architecture (memory does not depend on weight values), and ``photo`` turned
    by ``angle`` is segmented through its ``/segment`` API with one click at the photo's centre (both SAM paths,
    two image embeddings, the canonicalizer, the overlays). Returns ``{"app_peak_rss_mb", "app_request_ms"}``,
    the peak read from the child's ``VmHWM`` (Linux)."""
    from gradio_client import handle_file

    app = REPO / "app.py"
    height, width = load_image(photo).shape[:2]
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = Path(folder) / f"sam_{sam_model}_random.pth"
        torch.manual_seed(0)
        torch.save(build_sam(SAM_ARCHITECTURES[sam_model]).state_dict(), checkpoint)
        port = free_port()
        server = subprocess.Popen([sys.executable, str(app), "--sam", str(checkpoint), "--port", str(port)],
                                  cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                  env=dict(os.environ, HF_HUB_OFFLINE="1"))
        try:
            client = _connect(f"http://127.0.0.1:{port}/", server, time.monotonic() + timeout_s)
            start = time.perf_counter()
            client.predict(handle_file(str(photo)), angle, f"[[{width / 2}, {height / 2}, 1]]", "", "", True,
                           api_name="/segment")
            request_ms = (time.perf_counter() - start) * 1000.0
            return {"app_peak_rss_mb": _peak_rss_of(server.pid), "app_request_ms": request_ms}
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on at the moment of the call."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _connect(url: str, server: subprocess.Popen, deadline: float):
    from gradio_client import Client

    while True:
        if server.poll() is not None:
            raise RuntimeError(f"app.py exited with status {server.returncode}: {server.stderr.read()[-2000:]}")
        try:
            return Client(url, verbose=False)
        except Exception:  # not listening yet
            if time.monotonic() > deadline:
                raise TimeoutError(f"app.py did not answer on {url} in time") from None
            time.sleep(1.0)


def _peak_rss_of(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024.0  # kB


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.app_memory", description=__doc__.splitlines()[0])
    parser.add_argument("--sam", choices=sorted(SAM_ARCHITECTURES), default="vit_b")
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    figures = app_peak_memory(args.sam)
    print(f"| app.py with SAM {args.sam} serving one click on a turned photo: peak memory (RSS), request time | "
          f"{figures['app_peak_rss_mb']:.0f} MB, {figures['app_request_ms']:.0f} ms |")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
