"""The package as a user installs it: ``pip install .`` outside the checkout gives a library that finds its weights."""

import shutil
import subprocess
import sys

import pytest

from conftest import REPO, UPRIGHT

pytestmark = pytest.mark.slow  # a pip build and processes of their own


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """``pip install .`` of a copy of the sources into a folder of its own (the dependencies are this
    environment's: no download), and a working directory outside the checkout."""
    root = tmp_path_factory.mktemp("package")
    source = root / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "canon", source / "canon", ignore=shutil.ignore_patterns("__pycache__", "*.pth"))
    site = root / "site"
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                             "--no-deps", "--no-build-isolation", "--target", str(site), str(source)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    return site, elsewhere


def run_installed(installed, *args: str) -> subprocess.CompletedProcess:
    site, elsewhere = installed
    return subprocess.run([sys.executable, *args], cwd=elsewhere, capture_output=True, text=True, timeout=600,
                          env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})


def test_the_installed_library_canonicalizes_a_photo_with_its_shipped_weights(installed):
    site, _ = installed
    photo = UPRIGHT / "animals_cat.jpg"
    script = ("import canon, canon.registry as r; from canon.canonicalizer import Canonicalizer; "
              "from canon.images import load_image; from canon import geometry; "
              f"image = geometry.rotate_image(load_image({str(photo)!r}), 1); "
              "print(canon.__file__); print(r.WEIGHTS_DIR); print(Canonicalizer.load().canonicalize(image).k)")
    result = run_installed(installed, "-c", script)
    assert result.returncode == 0, result.stderr[-3000:]
    module, weights, k = result.stdout.split()
    assert module.startswith(str(site)) and weights.startswith(str(site))  # not the checkout's
    assert k == "1"  # the cat, turned a quarter turn, is recognised as turned by it


def test_the_installed_command_line_answers(installed):
    result = run_installed(installed, "-m", "canon", "evaluate", "orientation", "--help")
    assert result.returncode == 0 and "--canonicalizer" in result.stdout, result.stderr[-2000:]
    site, _ = installed
    assert (site / "bin" / "canon").is_file()  # the console script
