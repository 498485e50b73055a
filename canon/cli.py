"""Command line: ``python -m canon {segment,evaluate,bench,train,convert,publish} ...``; ``--help`` on each.

Every argument is checked by its argparse type (ranges included) and every input file before a model is loaded; a
problem exits with status 2 and one line ``error: ...`` on stderr. Options that several commands take are defined
once (:func:`model_options`, :func:`split_options`, :func:`training_options`, :func:`orientation_options`), and
``python -m canon.research`` builds on the same pieces. Each command imports what it runs when it runs: SAM, escnn,
matplotlib and pycocotools cost seconds that ``--help`` and an argument error should not pay.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from .prompts import PromptError, Prompts, parse_box, parse_point
from .registry import ModelUnavailableError
from .runtime import SAM_PRECISIONS
from .tilt import TiltEstimator


class CliError(Exception):
    """A user error: printed as one ``error: ...`` line, exit status 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse prints usage + message; one line is easier to read and to test
        raise CliError(f"{message} (see {self.prog} --help)")


# ------------------------------------------------------------------------------------------------- argument types


def _typed(parse, exceptions=(ValueError,)):
    """An argparse type from a parser whose errors are one sentence."""
    def convert(text: str):
        try:
            return parse(text)
        except exceptions as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return convert


def whole_number(low: int, high: int | None = None):
    """A whole number from ``low`` to ``high`` (no upper bound when None)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"{text[:20]!r} is not a whole number") from None
        if value < low or (high is not None and value > high):
            raise ValueError(f"{value} is not from {low} to {high}" if high is not None else
                             f"{value} is less than {low}")
        return value

    return _typed(parse)


def number(low: float, high: float = math.inf, low_open: bool = False):
    """A number from ``low`` to ``high`` (``inf`` allowed as the high end; never nan); ``low_open``: above ``low``."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"{text[:20]!r} is not a number") from None
        if not (low < value if low_open else low <= value) or not value <= high:  # nan fails both
            side = "above" if low_open else "from"
            raise ValueError(f"{text[:20]} is not {side} {low:g} {'to' if not low_open else 'and at most'} {high:g}")
        return value

    return _typed(parse)


def input_size(text: str) -> int:
    from .canonicalizer import INPUT_SIZES

    low, high = INPUT_SIZES
    return whole_number(low, high)(text)


# ------------------------------------------------------------------------------------------------- option groups


def add_command(commands, name: str, help: str, handler, *option_groups) -> argparse.ArgumentParser:
    """A subcommand whose arguments run ``handler(args)``, with the option groups (functions of a parser) given."""
    parser = commands.add_parser(name, help=help)
    parser.set_defaults(handler=handler)
    for add_options in option_groups:
        add_options(parser)
    return parser


def sam_precision_option(parser) -> None:
    parser.add_argument("--sam-precision", choices=SAM_PRECISIONS, default="auto",
                        help="arithmetic of SAM's image encoder (default auto: bfloat16 where the device has it "
                             "natively, float16 on a GPU without it, else float32)")


def model_options(parser: argparse.ArgumentParser, sam: bool = True) -> None:
    """``--canonicalizer`` (alias ``--model``), ``--sam`` when the command runs SAM, and ``--device``."""
    group = parser.add_argument_group("models")
    group.add_argument("--canonicalizer", "--model", dest="canonicalizer", default=None,
                       help="canonicalizer name from canon/weights/models.json, or a local model folder")
    if sam:
        group.add_argument("--sam", default=None,
                           help="SAM model name from canon/weights/models.json, or a local .pth")
        sam_precision_option(group)
    group.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")


def split_options(parser: argparse.ArgumentParser) -> None:
    """``--fold`` and ``--folds`` of :func:`canon.data.split_files`."""
    group = parser.add_argument_group("split")
    group.add_argument("--fold", type=whole_number(0), default=0,
                       help="which fold of the grouped split is validation (default 0, the fixed split)")
    group.add_argument("--folds", type=whole_number(2), default=5, help="number of folds of the split (default 5)")


def training_options(parser: argparse.ArgumentParser) -> None:
    """The options of :func:`canon.train.train`, with the photos, the split and the output folder."""
    from .train import ARCHITECTURES

    parser.add_argument("--images", required=True, help="folder of upright photos (split into train/validation)")
    parser.add_argument("--init", choices=("scratch", "paper"), default="scratch",
                        help="start from escnn's initialisation or from wrn-c4-paper's weights")
    parser.add_argument("--arch", choices=tuple(ARCHITECTURES), default="wrn-c4-small")
    parser.add_argument("--epochs", type=whole_number(1), default=10)
    parser.add_argument("--crops-per-photo", type=whole_number(1), default=4,
                        help="random views of each photo per epoch (default 4)")
    parser.add_argument("--input-size", type=input_size, default=128,
                        help="side of the network's input in pixels (the paper's 128; the cost goes with its square)")
    parser.add_argument("--lr", type=number(0, 1, low_open=True), default=1e-3,
                        help="SGD learning rate (the paper's 1e-3)")
    parser.add_argument("--freeze-batch-norm", action="store_true",
                        help="keep the batch-norm statistics the network starts with (for fine-tuning)")
    parser.add_argument("--bf16", action="store_true",
                        help="compute in bfloat16 (weights stay float32); about twice as fast on CPUs with "
                             "AVX512-BF16")
    split_options(parser)
    parser.add_argument("--resume", action="store_true",
                        help="continue from the latest checkpoint in --out (same --arch and --input-size)")
    parser.add_argument("--out", required=True, help="folder for the per-epoch checkpoints")


def orientation_options(parser: argparse.ArgumentParser) -> None:
    """The options of ``evaluate orientation``: the photos, the canonicalizer and the settings that replace its own."""
    parser.add_argument("--images", required=True, help="folder of upright photos")
    model_options(parser, sam=False)
    parser.add_argument("--input-size", type=input_size, default=None,
                             help="run the network on inputs of this side instead of its own (cost: its square)")
    policy = parser.add_argument_group("decision policy (instead of the model's config.json)")
    policy.add_argument("--precision", choices=("float32", "bfloat16", "int8"), default=None,
                        help="run the first pass in this arithmetic")
    policy.add_argument("--recheck-margin", type=number(0), default=None, metavar="M",
                        help="run the network again in float32 when a reduced-precision pass puts its best two "
                             "scores within M (plus the mirror margin, with the mirror); inf: every photo in float32")
    policy.add_argument("--mirror-average", action=argparse.BooleanOptionalAction, default=None,
                        help="decide near-ties with the mirrored photo too, or not")
    policy.add_argument("--mirror-margin", type=number(0), default=None, metavar="M",
                        help="near-ties for the mirror: best two float32 scores within M; inf: every photo")
    angles = parser.add_argument_group("any angle (instead of the four quarter turns)")
    angles.add_argument("--angle-step", type=number(0, 360, low_open=True), default=None, metavar="DEG",
                        help="turn every photo by each multiple of DEG degrees below 360 and measure the share "
                             "brought within 5 degrees of upright, with the tilt stage and without it")
    angles.add_argument("--tilt-gate", type=number(0), default=None, metavar="G",
                        help="undo a tilt only where its edge orientations peak G times higher than at 0 degrees "
                             f"(default: the model's tilt settings, else {TiltEstimator.gate:g})")
    parser.add_argument("--split", choices=("all", "train", "validation"), default="all",
                             help="only the photos of one side of the training split (see python -m canon train)")
    split_options(parser)
    json_option(parser)
    parser.add_argument("--plot", default=None, help="also draw the accuracy per rotation into this PNG")


def json_option(parser: argparse.ArgumentParser, what: str = "the summary") -> None:
    parser.add_argument("--json", required=True, help=f"where to write {what}")


# ------------------------------------------------------------------------------------------------- the parser


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m canon", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    seg = add_command(commands, "segment", "SAM alone and SAM + canonicalizer on one photo", segment)
    seg.add_argument("image", help="photo to segment (JPEG, PNG, ...)")
    seg.add_argument("--rotate", type=_typed(_quarter_turns), default=0,
                     help="rotate the photo by this many degrees counter-clockwise first (a multiple of 90)")
    seg.add_argument("--point", type=_typed(parse_point, PromptError), action="append", default=[],
                     metavar="X,Y[,LABEL]",
                     help="a click in the photo as stored on disk (x right, y down, pixels); LABEL 1 = object "
                          "(default), 0 = background; repeat for more points")
    seg.add_argument("--box", type=_typed(parse_box, PromptError), metavar="X0,Y0,X1,Y1",
                     help="a box in the photo as stored on disk")
    seg.add_argument("--everything", action="store_true", help="segment everything (no prompts)")
    seg.add_argument("--tilt", action="store_true",
                     help="undo the photo's tilt too (the edge-orientation stage in front of the canonicalizer)")
    model_options(seg)
    seg.add_argument("--out", required=True, help="folder for the overlays, mask files and result.json")

    evaluate = commands.add_parser("evaluate", help="measure the canonicalizer")
    kinds = evaluate.add_subparsers(dest="kind", required=True, parser_class=Parser)
    add_command(kinds, "orientation", "how often the upright orientation of photos is recovered",
                evaluate_orientation, orientation_options)

    consistency = add_command(kinds, "consistency", "without labels: do masks follow the photo's rotation?",
                              evaluate_consistency)
    consistency.add_argument("--images", required=True, help="folder of photos")
    model_options(consistency)
    consistency.add_argument("--angle-step", type=number(0, 360, low_open=True), default=None, metavar="DEG",
                             help="every multiple of DEG degrees below 360 instead of the three quarter turns")
    consistency.add_argument("--tilt", action="store_true", help="with the tilt stage in front of the canonicalizer")
    json_option(consistency)

    add_command(kinds, "tilt", "the tilt stage alone: tilts found against upright photos kept, per gate",
                evaluate_tilt, tilt_options)

    coco = add_command(kinds, "coco", "the paper's protocol: box-prompted segm mAP at the four rotations",
                       evaluate_coco)
    coco.add_argument("--annotations", required=True, help="COCO instances JSON (e.g. instances_val2017.json)")
    coco.add_argument("--images", required=True, help="folder of the images it lists")
    coco.add_argument("--max-images", type=whole_number(1), default=None, help="evaluate only the first N images")
    model_options(coco)
    json_option(coco)

    bench = add_command(commands, "bench", "SAM encoder vs canonicalizer time, click latency, memory", run_bench)
    bench.add_argument("--sam", choices=("vit_b", "vit_l", "vit_h"), action="append", default=None,
                       help="SAM architecture to time (random weights; default vit_b); give it again for more, "
                            "each under sams.<name> in the JSON")
    sam_precision_option(bench)
    bench.add_argument("--canonicalizer", action="append", default=None,
                       help="canonicalizer(s) to time; the first is used for the ratios (default: the registry's "
                            "default, then wrn-c4-paper)")
    bench.add_argument("--repeats", type=whole_number(1), default=3)
    bench.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    json_option(bench, "the figures")
    bench.add_argument("--plot", default=None, help="also draw the time breakdown into this PNG")

    add_command(commands, "train", "train a canonicalizer with the canonicalization prior",
                run_training, training_options)

    convert = add_command(commands, "convert", "turn the paper's checkpoint into canon/weights/wrn-c4-paper",
                          convert_paper)
    convert.add_argument("--source", required=True,
                         help="equiadapt-0.1.2-py3-none-any.whl or its tutorials/images/utils/equivariant_wrn_c4.pt")
    convert.add_argument("--out", default=None, help="output folder (default: canon/weights/wrn-c4-paper)")

    publish = add_command(commands, "publish", "push a canonicalizer folder with its model card to the Hub",
                          publish_folder)
    publish.add_argument("name", help="canonicalizer name or local folder")
    publish.add_argument("--repo-id", required=True, help="e.g. your-name/canonicalizer-wrn-c4")
    publish.add_argument("--private", action="store_true")
    return parser


def _quarter_turns(text: str) -> int:
    from . import geometry

    try:
        return geometry.k_from_degrees(float(text))
    except ValueError as error:
        raise ValueError(str(error) if "multiple" in str(error) else f"{text[:20]!r} is not a number") from None


# ----------------------------------------------------------------------------------------------------- helpers


def writable_folder(path: str | Path) -> Path:
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise CliError(f"cannot write to {folder}: {error.strerror or error}") from None
    return folder


def json_target(path: str) -> Path:
    target = Path(path)
    writable_folder(target.parent)
    return target


def photo_files(folder: str) -> list[Path]:
    from .data import image_files

    try:
        return image_files(folder)
    except (OSError, ValueError) as error:
        raise CliError(str(error)) from None


def split(files: list[Path], args, train_fraction: float = 1.0) -> tuple[list[Path], list[Path]]:
    """``(train, validation)`` of :func:`canon.data.split_files` for ``--fold``/``--folds``."""
    from .data import split_files

    check_fold(args)
    return split_files(files, args.fold, args.folds, train_fraction=train_fraction)


def check_fold(args) -> None:
    """``--fold`` below ``--folds`` (each is range-checked by its type; this is the one check across the two)."""
    if args.fold >= args.folds:
        raise CliError(f"--fold takes 0 to {args.folds - 1} with --folds {args.folds}")


def load_canonicalizer(args, kind=None):
    """``--canonicalizer`` on ``--device``, as a :class:`~canon.canonicalizer.Canonicalizer` (or ``kind``, a
    subclass)."""
    from .canonicalizer import Canonicalizer
    from .runtime import pick_device

    return (kind or Canonicalizer).load(args.canonicalizer, device=pick_device(args.device))


def load_segmenter(args):
    from .registry import default_sam
    from .runtime import pick_device
    from .segmenter import EquivariantSegmenter, SamBackend

    canonicalizer = load_canonicalizer(args)
    if getattr(args, "tilt", False) and canonicalizer.tilt is None:  # a model's config.json may bring its own
        canonicalizer = canonicalizer.with_tilt()
    return EquivariantSegmenter(canonicalizer,
                                SamBackend.load(args.sam or default_sam(), device=str(pick_device(args.device)),
                                                precision=args.sam_precision))


def write_summary(target: Path, summary: dict, table: str) -> None:
    target.write_text(json.dumps(summary, indent=2) + "\n")
    print(table)


# ----------------------------------------------------------------------------------------------------- commands


def segment(args) -> None:
    from . import geometry, maskio, schema
    from .images import ImageError, load_image
    from .registry import default_sam

    try:
        image = load_image(args.image)
    except ImageError as error:
        raise CliError(str(error)) from None
    if args.everything == bool(args.point or args.box):
        raise CliError("give --point/--box prompts, or --everything, but not both")
    prompts = Prompts.make([p[:2] for p in args.point], [p[2] for p in args.point], args.box)
    try:
        prompts.validate(image.shape[:2])
    except ValueError as error:
        raise CliError(str(error)) from None
    out = writable_folder(args.out)

    segmenter = load_segmenter(args)
    k = args.rotate
    rotated = geometry.rotate_image(image, k)
    start = time.perf_counter()
    if args.everything:
        result = segmenter.segment_everything(rotated)
    else:
        result = segmenter.segment(rotated, prompts.rotated(k, image.shape[:2]))
    total_ms = (time.perf_counter() - start) * 1000

    from PIL import Image

    from .render import overlay

    rotation_deg = 90 * k
    for path, stem in schema.MASK_FILE_STEMS.items():
        path_result = getattr(result, path)
        Image.fromarray(overlay(rotated, path_result.masks)).save(out / f"{stem}_overlay.png")
        maskio.save_masks(out, stem, path_result.masks, path_result.scores, path=stem, rotation_deg=rotation_deg,
                          sam=args.sam or default_sam())
    record = schema.segment_record(result, rotation_deg, schema.agreement(result, args.everything))
    (out / "result.json").write_text(json.dumps(record, indent=2) + "\n")
    decision = result.canonicalization
    probabilities = ", ".join(f"{a}: {p:.3f}" for a, p in zip(geometry.ANGLES_DEG, decision.probabilities))
    tilt = f", tilt {decision.tilt_deg:+.1f} deg undone first" if decision.tilt_deg else ""
    print(f"canonicalizer: k={decision.k} ({decision.angle_deg} deg){tilt}, probabilities {{{probabilities}}}, "
          f"{decision.elapsed_ms:.0f} ms")
    for name, r in (("SAM alone", result.sam), ("SAM + canonicalizer", result.canonicalized)):
        print(f"{name}: {len(r.masks)} masks, scores {np.round(r.scores, 3).tolist()}, encoder {r.encoder_ms:.0f} ms"
              f"{' (cached)' if r.cached else ''}, decoder {r.decoder_ms:.0f} ms")
    print(f"total {total_ms:.0f} ms; wrote {out}")


def evaluate_orientation(args, load=None) -> None:
    """``evaluate orientation``; ``load(args)`` gives the canonicalizer (default :func:`load_canonicalizer`)."""
    from . import evaluate

    target = json_target(args.json)
    files = photo_files(args.images)
    if args.split != "all":
        files = split(files, args)[args.split == "validation"]
        if not files:
            raise CliError(f"no photo of {args.images} falls on the {args.split} side of the split")
    canonicalizer = (load or load_canonicalizer)(args)
    name = args.canonicalizer or canonicalizer_default()
    if args.input_size is not None:
        canonicalizer = canonicalizer.with_preprocessing(input_size=args.input_size)
        name = f"{name} at {args.input_size} px"
    changes = {option: value for option in ("precision", "recheck_margin", "mirror_average", "mirror_margin")
               if (value := getattr(args, option)) is not None}
    if changes:
        canonicalizer = canonicalizer.with_policy(**changes)
        name += "".join(_POLICY_LABELS[option](value) for option, value in changes.items())
    if args.angle_step is not None:
        if args.plot:
            raise CliError("--plot draws the quarter-turn evaluation; leave it out with --angle-step")
        estimator = canonicalizer.tilt or TiltEstimator()
        if args.tilt_gate is not None:
            estimator = dataclasses.replace(estimator, gate=args.tilt_gate)
        summary = evaluate.orientation_by_angle(canonicalizer, files, name, args.angle_step, estimator,
                                                folds=args.folds)
        write_summary(target, summary, evaluate.orientation_by_angle_table(summary))
        return
    summary = evaluate.orientation_accuracy(canonicalizer, files, name)
    write_summary(target, summary, evaluate.orientation_table(summary))
    if args.plot:
        from .bench import machine_description
        from .plots import plot_orientation

        plot_orientation(summary, args.plot, machine=machine_description())


# How each policy option names the run in the summary.
_POLICY_LABELS = {
    "precision": lambda value: f" in {value}",
    "recheck_margin": lambda value: f", recheck margin {value:g}",
    "mirror_average": lambda value: f", mirror average {'on' if value else 'off'}",
    "mirror_margin": lambda value: f", mirror margin {value:g}",
}


def canonicalizer_default() -> str:
    from .registry import default_canonicalizer

    return default_canonicalizer()


def evaluate_consistency(args) -> None:
    from . import evaluate
    from .registry import default_sam

    target = json_target(args.json)
    files = photo_files(args.images)
    segmenter, sam = load_segmenter(args), args.sam or default_sam()
    try:
        summary = evaluate.mask_consistency(segmenter, files, sam, args.angle_step or 90.0)
    except ValueError as error:
        raise CliError(str(error)) from None
    write_summary(target, summary, evaluate.consistency_table(summary))


# The gates `evaluate tilt` measures by default: the stage's own and the trade-off on either side of it.
TILT_GATES = (1.0, TiltEstimator.gate, 1.3, 1.6, 2.0)


def tilt_options(parser) -> None:
    """The options of ``evaluate tilt``: photos, angles, gates, folds, JSON."""
    parser.add_argument("--images", required=True, help="folder of upright photos")
    parser.add_argument("--angle-step", type=number(0, 360, low_open=True), default=15.0, metavar="DEG",
                        help="tilt every photo by what each multiple of DEG degrees leaves beyond quarter turns "
                             "(default 15)")
    parser.add_argument("--gate", type=number(0), action="append", default=None, metavar="G", dest="gates",
                        help="a confidence gate to measure (repeat for more; default "
                             f"{', '.join(f'{g:g}' for g in TILT_GATES)})")
    parser.add_argument("--folds", type=whole_number(2), default=5, help="number of folds of the split (default 5)")
    json_option(parser)


def evaluate_tilt(args, estimator: TiltEstimator | None = None) -> None:
    """``evaluate tilt``: the served tilt stage (or ``estimator``, one of its kind) alone."""
    from . import evaluate

    target = json_target(args.json)
    summary = evaluate.tilt_estimates(photo_files(args.images), args.angle_step, args.gates or TILT_GATES,
                                      estimator=estimator or TiltEstimator(), folds=args.folds)
    write_summary(target, summary, evaluate.tilt_estimates_table(summary) + "\n\n" + evaluate.tilt_peaks_table(summary))


def evaluate_coco(args) -> None:
    from .coco import coco_table, evaluate_coco as run_coco

    target = json_target(args.json)
    for path in (args.annotations, args.images):
        if not Path(path).exists():
            raise CliError(f"no such file or folder: {path}")
    try:
        summary = run_coco(load_segmenter(args), args.annotations, args.images, args.max_images)
    except (ValueError, KeyError, json.JSONDecodeError) as error:
        raise CliError(f"cannot evaluate {args.annotations}: {error}") from None
    write_summary(target, summary, coco_table(summary))


def run_bench(args) -> None:
    from .bench import bench_table, benchmark

    target = json_target(args.json)
    names = args.canonicalizer or list(dict.fromkeys([canonicalizer_default(), "wrn-c4-paper"]))
    sams = tuple(dict.fromkeys(args.sam or ["vit_b"]))
    summary = benchmark(sams, tuple(names), repeats=args.repeats, device=args.device,
                        sam_precision=args.sam_precision)
    write_summary(target, summary, bench_table(summary))
    if args.plot:
        from .plots import plot_bench

        plot_bench(summary, args.plot)


def run_training(args, objective=None, train_fraction: float = 1.0) -> None:
    """``train``: :func:`canon.train.train` on the split of ``--images``; ``objective`` and ``train_fraction`` are
    the research command line's."""
    from .train import TrainConfig, train

    if args.init == "paper" and args.arch != "wrn-c4-paper":
        raise CliError("--init paper needs --arch wrn-c4-paper (the weights have that shape)")
    train_files, validation_files = split(photo_files(args.images), args, train_fraction)
    writable_folder(args.out)
    config = TrainConfig(epochs=args.epochs, crops_per_photo=args.crops_per_photo, learning_rate=args.lr,
                         freeze_batch_norm=args.freeze_batch_norm, bfloat16=args.bf16)
    try:  # a split without training photos, a checkpoint that is not the model asked for
        history = train(train_files, validation_files, args.out, arch=args.arch, init=args.init, config=config,
                        resume=args.resume, input_size=args.input_size, objective=objective)
    except ValueError as error:
        raise CliError(str(error)) from None
    if history:
        best = max(history, key=lambda h: h["validation_accuracy"])
        print(f"best validation {100 * best['validation_accuracy']:.1f} % at epoch {best['epoch']}: "
              f"{Path(args.out) / ('epoch-' + str(best['epoch']))}")


def convert_paper(args) -> None:
    from .convert import convert_paper_checkpoint
    from .registry import WEIGHTS_DIR

    if not Path(args.source).is_file():
        raise CliError(f"no such file: {args.source}")
    out = args.out or str(WEIGHTS_DIR / "wrn-c4-paper")
    try:
        convert_paper_checkpoint(args.source, out)
    except (ValueError, KeyError, OSError) as error:
        raise CliError(str(error)) from None
    print(f"wrote {out}")


def publish_folder(args) -> None:
    from .registry import PublishError, publish_canonicalizer

    try:
        folder, commit = publish_canonicalizer(args.name, args.repo_id, private=args.private)
    except PublishError as error:
        raise CliError(str(error)) from None
    print(f"published {folder} to {args.repo_id}: {commit}")
    print(f"point the app at it with CANON_CANONICALIZER_REPO={args.repo_id}")


def main(argv: list[str] | None = None, parser: argparse.ArgumentParser | None = None) -> int:
    """Parse ``argv`` with ``parser`` (default: :func:`build_parser`'s) and run the chosen command's handler."""
    try:
        args = (parser or build_parser()).parse_args(argv)
        args.handler(args)
    except (CliError, ModelUnavailableError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def run() -> None:
    """The ``canon`` console script: :func:`main` with the process's arguments, its status as the exit status."""
    sys.exit(main())
