"""The docs as a reader meets them: generated figures match their sources, and every relative link leads somewhere."""

import re

from benchmarks import docs_tables
from conftest import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def test_generated_figures_match_their_sources():
    assert docs_tables.main(["--check"]) == 0  # else: python -m benchmarks.docs_tables
    readme = (REPO / "README.md").read_text()
    assert "<!-- generated: headline -->\n| what | figure | command |" in readme


def test_a_stale_block_is_found_and_rewritten(tmp_path):
    stale = "before\n<!-- generated: orientation -->\n| typed by hand | 99 % |\n<!-- end: orientation -->\nafter\n"
    fresh = docs_tables.regenerate(stale)
    assert "typed by hand" not in fresh and "| all (215 photos x 4) |" in fresh
    assert fresh.startswith("before\n") and fresh.endswith("after\n") and docs_tables.regenerate(fresh) == fresh


def test_relative_links_and_images_lead_to_files():
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
            if "://" not in target:
                assert (doc.parent / target).exists(), f"{doc.name} links to {target}, which is missing"


def test_the_readme_is_a_users_page():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= 260  # the lab notebook lives in docs/
    for heading in ("## Using the demo", "## Running it", "## API", "## Mask files", "## Command line",
                    "## Library", "## Tests", "## Credits"):
        assert heading in lines
