"""Regenerate the figures in the docs that can be computed: ``python -m benchmarks.docs_tables`` rewrites every block
``<!-- generated: NAME -->`` ... ``<!-- end: NAME -->`` of the Markdown files below from its source (the bench,
orientation and tilt JSON in ``docs/``, which ``python -m canon bench``, ``evaluate orientation``, ``evaluate tilt``
and ``python -m canon.research tilt-candidates``, ``tilt-network`` and ``tilt-lines`` write), so that no figure
there is typed by hand. ``--check`` only reports blocks that differ (the tests run it)."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from canon.bench import bench_table
from canon.evaluate import orientation_by_angle_table, orientation_table, tilt_estimates_table, tilt_peaks_table
from canon.research.tilt_candidates import table as tilt_candidates_table
from canon.research.tilt_network import table as tilt_network_table

REPO = Path(__file__).resolve().parents[1]
DOCS = (REPO / "README.md", REPO / "docs" / "performance.md", REPO / "docs" / "experiments.md")
BENCH, ORIENTATION = REPO / "docs" / "bench-cpu.json", REPO / "docs" / "orientation-wrn-c4-paper.json"
ANY_ANGLE = REPO / "docs" / "orientation-any-angle.json"
TILT_GATES, TILT_CANDIDATES = REPO / "docs" / "tilt-gates.json", REPO / "docs" / "tilt-candidates.json"
TILT_NETWORK, TILT_LINES = REPO / "docs" / "tilt-network.json", REPO / "docs" / "tilt-lines.json"
# The same evaluations on the photos from outside the repository (docs/experiments.md says how to rebuild them).
EXTERNAL_ANY_ANGLE = REPO / "docs" / "orientation-any-angle-external.json"
EXTERNAL_TILT_GATES = REPO / "docs" / "tilt-gates-external.json"


def headline_table(figures: dict) -> str:
    """The README's short table: what a visitor and a deployer want to know first."""
    bench, orientation, any_angle = figures["bench"], figures["orientation"], figures["any_angle"]
    external = figures["any_angle_external"]
    model = bench["canonicalizer"]
    rows = [
        ("photos whose rotation the canonicalizer recovers (the 215 shared ones, at every quarter turn)",
         f"{100 * orientation['accuracy']:.1f} %", "`python -m canon evaluate orientation`"),
        (f"the same photos turned by every multiple of {any_angle['angle_step_deg']:g}°, brought within 5° of "
         "upright: quarter turns only / with the tilt stage (the app's `--tilt`); in brackets, "
         f"{external['n_images']} photos from outside the repository",
         f"{100 * any_angle['quarter_turns']['within_5deg']:.1f} % / {100 * any_angle['within_5deg']:.1f} % "
         f"({100 * external['quarter_turns']['within_5deg']:.1f} % / {100 * external['within_5deg']:.1f} %)",
         f"same, `--angle-step {any_angle['angle_step_deg']:g}`"),
        (f"canonicalizer time / SAM {bench['sam_model']} encoder time, one photo",
         f"{bench['canonicalizer_ms']:.0f} ms / {bench['sam_encoder_ms'] / 1000:.1f} s "
         f"({100 * bench['overhead_ratio']:.1f} %)", "`python -m canon bench`"),
        ("canonicalizer parameters / SAM parameters", f"{100 * bench['params_ratio']:.2f} %", "same"),
        ("first click at once on a newly turned photo (two image embeddings)",
         f"{bench['first_click_ms'] / 1000:.1f} s", "same"),
        ("first click on a newly turned photo once the page has prepared its embeddings",
         f"{bench['ready_click_ms']:.0f} ms", "same"),
        ("each further click (two mask decoders, overlays)", f"{bench['click_ms']:.0f} ms", "same"),
    ]
    return ("| what | figure | command |\n|---|---:|---|\n"
            + "\n".join(f"| {what} | {figure} | {command} |" for what, figure, command in rows)
            + f"\n\n{bench['machine']}; {model}")


SOURCES = {
    "bench": ((BENCH,), bench_table),
    "orientation": ((ORIENTATION,), orientation_table),
    "any-angle": ((ANY_ANGLE,), orientation_by_angle_table),
    "tilt-gates": ((TILT_GATES,), tilt_estimates_table),
    "tilt-peaks": ((TILT_GATES,), tilt_peaks_table),
    "tilt-candidates": ((TILT_CANDIDATES,), tilt_candidates_table),
    "tilt-network": ((TILT_NETWORK,), tilt_network_table),
    "tilt-lines": ((TILT_LINES,), tilt_estimates_table),
    "tilt-lines-peaks": ((TILT_LINES,), tilt_peaks_table),
    "any-angle-external": ((EXTERNAL_ANY_ANGLE,), orientation_by_angle_table),
    "tilt-gates-external": ((EXTERNAL_TILT_GATES,), tilt_estimates_table),
    "headline": ((BENCH, ORIENTATION, ANY_ANGLE, EXTERNAL_ANY_ANGLE), lambda bench, orientation, any_angle, external:
                 headline_table({"bench": bench, "orientation": orientation, "any_angle": any_angle,
                                 "any_angle_external": external})),
}
BLOCK = re.compile(r"(<!-- generated: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- end: (?P=name) -->)", re.DOTALL)


def block(name: str) -> str:
    """The Markdown a block holds: the source's table, and the file it was made from."""
    sources, table = SOURCES[name]
    names = " and ".join(f"`{source.relative_to(REPO)}`" for source in sources)
    return f"{table(*(json.loads(source.read_text()) for source in sources))}\n\n(generated from {names})\n"


def regenerate(text: str) -> str:
    return BLOCK.sub(lambda m: m.group(1) + block(m.group("name")) + m.group(4), text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.docs_tables", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report stale blocks instead of rewriting them")
    args = parser.parse_args(argv)
    stale = []
    for path in DOCS:
        text = path.read_text()
        fresh = regenerate(text)
        if fresh != text:
            stale.append(str(path.relative_to(REPO)))
            if not args.check:
                path.write_text(fresh)
    if args.check and stale:
        print(f"stale generated figures in {', '.join(stale)}: run python -m benchmarks.docs_tables")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
