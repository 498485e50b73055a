"""Command line: ``python -m canon {segment,evaluate,bench,train,convert,publish} ...``; ``--help`` on each.

Every argument and input file is checked before a model is loaded; a problem exits with status 2 and one line
``error: ...`` on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from .prompts import PromptError, Prompts, parse_box, parse_point


class CliError(Exception):
    """A user error: printed as one ``error: ...`` line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse prints usage + message; one line is easier to read and to test
        raise CliError(f"{message} (see {self.prog} --help)")


def _cli_type(parse):
    """An argparse type from one of canon.prompts' parsers: its one sentence becomes argparse's message."""
    def convert(text: str):
        try:
            return parse(text)
        except PromptError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return convert


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m canon", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    seg = commands.add_parser("segment", help="SAM alone and SAM + canonicalizer on one photo")
    seg.add_argument("image", help="photo to segment (JPEG, PNG, ...)")
    seg.add_argument("--rotate", type=float, default=0.0,
                     help="rotate the photo by this many degrees counter-clockwise first (a multiple of 90)")
    seg.add_argument("--point", type=_cli_type(parse_point), action="append", default=[], metavar="X,Y[,LABEL]",
                     help="a click in the photo as stored on disk (x right, y down, pixels); LABEL 1 = object "
                          "(default), 0 = background; repeat for more points")
    seg.add_argument("--box", type=_cli_type(parse_box), metavar="X0,Y0,X1,Y1",
                     help="a box in the photo as stored on disk")
    seg.add_argument("--everything", action="store_true", help="segment everything (no prompts)")
    seg.add_argument("--sam", default=None, help="SAM model name from weights/models.json, or a local .pth")
    seg.add_argument("--canonicalizer", default=None, help="canonicalizer name, or a local model folder")
    seg.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    seg.add_argument("--out", required=True, help="folder for the overlays and masks")

    evaluate = commands.add_parser("evaluate", help="measure the canonicalizer")
    kinds = evaluate.add_subparsers(dest="kind", required=True, parser_class=_Parser)
    orientation = kinds.add_parser("orientation", help="how often the upright orientation of photos is recovered")
    orientation.add_argument("--images", required=True, help="folder of upright photos")
    orientation.add_argument("--model", default=None, help="canonicalizer name or local folder")
    orientation.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    orientation.add_argument("--input-size", type=int, default=None,
                             help="run the network on inputs of this side instead of its own (cost: its square)")
    orientation.add_argument("--precision", choices=("float32", "bfloat16", "int8"), default=None,
                             help="run the network in this arithmetic instead of the model's own")
    orientation.add_argument("--recheck-margin", type=float, default=None, metavar="M",
                             help="run the network again in float32 when a reduced-precision pass puts its best two "
                                  "scores within M (plus the mirror margin, with the mirror) instead of the model's "
                                  "own margin; inf: every photo in float32")
    orientation.add_argument("--mirror-average", action=argparse.BooleanOptionalAction, default=None,
                             help="decide near-ties with the mirrored photo too, or not, instead of as the model's "
                                  "config.json says")
    orientation.add_argument("--mirror-margin", type=float, default=None, metavar="M",
                             help="near-ties for the mirror: best two float32 scores within M, instead of the "
                                  "model's own margin; inf: every photo")
    orientation.add_argument("--split", choices=("all", "train", "validation"), default="all",
                             help="only the photos of one side of the training split (see python -m canon train)")
    _fold_arguments(orientation)
    orientation.add_argument("--json", required=True, help="where to write the summary")
    orientation.add_argument("--plot", default=None, help="also draw the accuracy per rotation into this PNG")

    consistency = kinds.add_parser("consistency", help="without labels: do masks follow the photo's rotation?")
    consistency.add_argument("--images", required=True, help="folder of photos")
    consistency.add_argument("--sam", default=None, help="SAM model name or local .pth")
    consistency.add_argument("--canonicalizer", default=None, help="canonicalizer name or local folder")
    consistency.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    consistency.add_argument("--json", required=True, help="where to write the summary")

    coco = kinds.add_parser("coco", help="the paper's protocol: box-prompted segm mAP at the four rotations")
    coco.add_argument("--annotations", required=True, help="COCO instances JSON (e.g. instances_val2017.json)")
    coco.add_argument("--images", required=True, help="folder of the images it lists")
    coco.add_argument("--sam", default=None, help="SAM model name or local .pth")
    coco.add_argument("--canonicalizer", default=None, help="canonicalizer name or local folder")
    coco.add_argument("--max-images", type=int, default=None, help="evaluate only the first N images")
    coco.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    coco.add_argument("--json", required=True, help="where to write the summary")

    bench = commands.add_parser("bench", help="SAM encoder vs canonicalizer time, click latency, memory")
    bench.add_argument("--sam", default="vit_b", help="SAM architecture to time (random weights): vit_b, vit_l, vit_h")
    bench.add_argument("--canonicalizer", action="append", default=None,
                       help="canonicalizer(s) to time; the first is used for the ratios (default: the registry's "
                            "default, then wrn-c4-paper)")
    bench.add_argument("--repeats", type=int, default=3)
    bench.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    bench.add_argument("--json", required=True, help="where to write the figures")
    bench.add_argument("--plot", default=None, help="also draw the time breakdown into this PNG")
    bench.add_argument("--app", action="store_true",
                       help="also measure the peak memory of app.py (a child process) serving one click with --sam")

    train = commands.add_parser("train", help="train a canonicalizer with the canonicalization prior")
    train.add_argument("--images", required=True, help="folder of upright photos (split into train/validation)")
    train.add_argument("--init", choices=("scratch", "paper"), default="scratch",
                       help="start from escnn's initialisation or from wrn-c4-paper's weights")
    train.add_argument("--arch", default="wrn-c4-small", help="wrn-c4-small (default) or wrn-c4-paper")
    train.add_argument("--group", default="C4", help="rotation group; C4 is what the library serves")
    train.add_argument("--epochs", type=int, default=10)
    train.add_argument("--crops-per-photo", type=int, default=None,
                       help="random views of each photo per epoch (default 4), or in all with --probe (default 16)")
    train.add_argument("--input-size", type=int, default=128,
                       help="side of the network's input in pixels (the paper's 128; the cost goes with its square)")
    train.add_argument("--lr", type=float, default=1e-3, help="SGD learning rate (the paper's 1e-3)")
    train.add_argument("--freeze-batch-norm", action="store_true",
                       help="keep the batch-norm statistics the network starts with (for fine-tuning)")
    train.add_argument("--bf16", action="store_true",
                       help="compute in bfloat16 (weights stay float32); about twice as fast on CPUs with AVX512-BF16")
    train.add_argument("--teacher", default=None,
                       help="distil from this canonicalizer (name or folder), which scores the same crops at its own "
                            "input size, e.g. wrn-c4-paper at 128 px")
    train.add_argument("--distill-weight", type=float, default=0.5,
                       help="weight of the distillation term against the prior (with --teacher; default 0.5)")
    train.add_argument("--probe", default=None, metavar="BASE",
                       help="instead of training a network, fit an equivariant linear probe on the frozen trunk of "
                            "BASE (a model name or folder) at --input-size, from --crops-per-photo views per photo; "
                            "the network's options (--arch, --init, --epochs, --lr, ...) do not apply")
    _fold_arguments(train)
    train.add_argument("--train-fraction", type=float, default=1.0,
                       help="train on about this share of the training photo groups (default 1; a smaller share's "
                            "photos are a subset of a larger one's, validation unchanged): for learning curves")
    train.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    train.add_argument("--out", required=True, help="folder for the per-epoch checkpoints")

    convert = commands.add_parser("convert", help="turn the paper's checkpoint into weights/wrn-c4-paper")
    convert.add_argument("--source", required=True,
                         help="equiadapt-0.1.2-py3-none-any.whl or its tutorials/images/utils/equivariant_wrn_c4.pt")
    convert.add_argument("--out", default=None, help="output folder (default: weights/wrn-c4-paper)")

    publish = commands.add_parser("publish", help="push a canonicalizer folder with its model card to the Hub")
    publish.add_argument("name", help="canonicalizer name or local folder")
    publish.add_argument("--repo-id", required=True, help="e.g. your-name/canonicalizer-wrn-c4")
    publish.add_argument("--private", action="store_true")
    return parser


def _fold_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fold", type=int, default=0,
                        help="which fold of the grouped split is validation (default 0, the fixed split)")
    parser.add_argument("--folds", type=int, default=5, help="number of folds of the split (default 5)")


# ----------------------------------------------------------------------------------------------------- commands


def _writable_folder(path: str) -> Path:
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise CliError(f"cannot write to {folder}: {error.strerror or error}") from None
    return folder


def _segment(args) -> None:
    from . import geometry
    from .images import ImageError, load_image

    try:
        k = geometry.k_from_degrees(args.rotate)
    except ValueError as error:
        raise CliError(f"--rotate: {error}") from None
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
    out = _writable_folder(args.out)

    segmenter = _segmenter(args)
    rotated = geometry.rotate_image(image, k)
    start = time.perf_counter()
    if args.everything:
        result = segmenter.segment_everything(rotated)
    else:
        result = segmenter.segment(rotated, prompts.rotated(k, image.shape[:2]))
    total_ms = (time.perf_counter() - start) * 1000

    from PIL import Image

    from .render import overlay

    for name, path_result in (("sam", result.sam), ("canonicalized", result.canonicalized)):
        Image.fromarray(overlay(rotated, path_result.masks)).save(out / f"{name}_overlay.png")
        np.savez_compressed(out / f"{name}_masks.npz", masks=path_result.masks, scores=path_result.scores)
    decision = result.canonicalization
    probabilities = ", ".join(f"{a}: {p:.3f}" for a, p in zip(geometry.ANGLES_DEG, decision.probabilities))
    print(f"canonicalizer: k={decision.k} ({decision.angle_deg} deg), probabilities {{{probabilities}}}, "
          f"{decision.elapsed_ms:.0f} ms")
    for name, r in (("SAM alone", result.sam), ("SAM + canonicalizer", result.canonicalized)):
        print(f"{name}: {len(r.masks)} masks, scores {np.round(r.scores, 3).tolist()}, encoder {r.encoder_ms:.0f} ms"
              f"{' (cached)' if r.cached else ''}, decoder {r.decoder_ms:.0f} ms")
    print(f"total {total_ms:.0f} ms; wrote {out}")


def _json_target(path: str) -> Path:
    target = Path(path)
    _writable_folder(str(target.parent))
    return target


def _photos(folder: str) -> list[Path]:
    from .evaluate import image_files

    try:
        return image_files(folder)
    except (OSError, ValueError) as error:
        raise CliError(str(error)) from None


def _segmenter(args):
    from .canonicalizer import Canonicalizer
    from .models import default_sam
    from .segmenter import EquivariantSegmenter, SamBackend, pick_device

    device = pick_device(args.device)
    return EquivariantSegmenter(Canonicalizer.load(args.canonicalizer, device=device),
                                SamBackend.load(args.sam or default_sam(), device=str(device)))


def _write_summary(target: Path, summary: dict, table: str) -> None:
    target.write_text(json.dumps(summary, indent=2) + "\n")
    print(table)


# evaluate orientation's options that set a Canonicalizer attribute of the same name, and how each names the run.
_ORIENTATION_OVERRIDES = {
    "precision": lambda value: f" in {value}",
    "recheck_margin": lambda value: f", recheck margin {value:g}",
    "mirror_average": lambda value: f", mirror average {'on' if value else 'off'}",
    "mirror_margin": lambda value: f", mirror margin {value:g}",
}


def _evaluate(args) -> None:
    from . import evaluate

    target = _json_target(args.json)
    if args.kind == "orientation":
        files = _photos(args.images)
        from .canonicalizer import Canonicalizer
        from .models import default_canonicalizer
        from .segmenter import pick_device
        from .train import split_files

        if args.input_size is not None:
            _check_input_size(args.input_size)
        for option in ("recheck_margin", "mirror_margin"):
            if getattr(args, option) is not None and not getattr(args, option) >= 0:  # also refuses nan
                raise CliError(f"--{option.replace('_', '-')} takes a number from 0 to inf")
        _check_fold(args)
        if args.split != "all":
            files = split_files(files, args.fold, args.folds)[args.split == "validation"]
            if not files:
                raise CliError(f"no photo of {args.images} falls on the {args.split} side of the split")
        name = args.model or default_canonicalizer()
        canonicalizer = Canonicalizer.load(name, device=pick_device(args.device))
        if args.input_size is not None:
            canonicalizer.preprocess_config["input_size"] = args.input_size
            name = f"{name} at {args.input_size} px"
        for attribute, label in _ORIENTATION_OVERRIDES.items():  # options that replace the model's config.json
            value = getattr(args, attribute)
            if value is not None:
                setattr(canonicalizer, attribute, value)
                name += label(value)
        summary = evaluate.orientation_accuracy(canonicalizer, files, name)
        _write_summary(target, summary, evaluate.orientation_table(summary))
        if args.plot:
            from .bench import machine_description
            from .plots import plot_orientation

            plot_orientation(summary, args.plot, machine=machine_description())
    elif args.kind == "consistency":
        files = _photos(args.images)
        from .models import default_sam

        summary = evaluate.mask_consistency(_segmenter(args), files, args.sam or default_sam())
        _write_summary(target, summary, evaluate.consistency_table(summary))
    else:
        from .coco import coco_table, evaluate_coco

        for path in (args.annotations, args.images):
            if not Path(path).exists():
                raise CliError(f"no such file or folder: {path}")
        try:
            summary = evaluate_coco(_segmenter(args), args.annotations, args.images, args.max_images)
        except (ValueError, KeyError, json.JSONDecodeError) as error:
            raise CliError(f"cannot evaluate {args.annotations}: {error}") from None
        _write_summary(target, summary, coco_table(summary))


def _bench(args) -> None:
    from .bench import app_peak_memory, bench_table, benchmark
    from .models import default_canonicalizer
    from .segmenter import SAM_ARCHITECTURES

    if args.sam not in SAM_ARCHITECTURES:
        raise CliError(f"--sam takes one of {', '.join(SAM_ARCHITECTURES)} (timing uses random weights)")
    if args.repeats < 1:
        raise CliError("--repeats must be at least 1")
    target = _json_target(args.json)
    names = args.canonicalizer or list(dict.fromkeys([default_canonicalizer(), "wrn-c4-paper"]))
    summary = benchmark(args.sam, tuple(names), repeats=args.repeats, device=args.device)
    if args.app:
        summary |= app_peak_memory(args.sam)
    _write_summary(target, summary, bench_table(summary))
    if args.plot:
        from .plots import plot_bench

        plot_bench(summary, args.plot)


def _check_input_size(size: int) -> None:
    if not 32 <= size <= 512:
        raise CliError("--input-size takes 32 to 512 pixels (the network trims 24 from each side's length)")


def _check_fold(args) -> None:
    if not (args.folds >= 2 and 0 <= args.fold < args.folds):
        raise CliError("--folds takes 2 or more and --fold 0 to folds - 1")


def _train(args) -> None:
    from .train import ARCHITECTURES, ProbeConfig, TrainConfig, fit_probe, train

    if args.group != "C4":
        raise CliError(f"--group {args.group} is not supported: the library's networks and geometry are C4")
    if args.arch not in ARCHITECTURES:
        raise CliError(f"--arch takes one of {', '.join(ARCHITECTURES)}")
    if args.init == "paper" and args.arch != "wrn-c4-paper":
        raise CliError("--init paper needs --arch wrn-c4-paper (the weights have that shape)")
    if args.crops_per_photo is None:
        args.crops_per_photo = 16 if args.probe is not None else 4
    if args.epochs < 1 or args.crops_per_photo < 1:
        raise CliError("--epochs and --crops-per-photo must be at least 1")
    _check_input_size(args.input_size)
    _check_fold(args)
    if not 0 <= args.distill_weight <= 1:
        raise CliError("--distill-weight takes a weight between 0 and 1")
    if not 0 < args.lr < 1:
        raise CliError("--lr takes a learning rate between 0 and 1")
    if not 0 < args.train_fraction <= 1:
        raise CliError("--train-fraction takes a share above 0 and at most 1")
    files = _photos(args.images)
    _writable_folder(args.out)
    if args.probe is not None and (args.teacher is not None or args.resume):
        raise CliError("--probe fits in one go from a frozen trunk: it takes no --teacher and no --resume")
    try:  # a split without training photos, a base that is not a whole trunk
        if args.probe is not None:
            fit_probe(files, args.out, base=args.probe, input_size=args.input_size,
                      config=ProbeConfig(crops_per_photo=args.crops_per_photo, fold=args.fold, folds=args.folds,
                                         train_fraction=args.train_fraction))
            print(f"saved {args.out}")
            return
        history = train(files, args.out, arch=args.arch, init=args.init, resume=args.resume,
                        input_size=args.input_size,
                        config=TrainConfig(epochs=args.epochs, crops_per_photo=args.crops_per_photo,
                                           learning_rate=args.lr, freeze_batch_norm=args.freeze_batch_norm,
                                           bfloat16=args.bf16, fold=args.fold, folds=args.folds,
                                           train_fraction=args.train_fraction,
                                           teacher=args.teacher, distill_weight=args.distill_weight))
    except ValueError as error:
        raise CliError(str(error)) from None
    if history:
        best = max(history, key=lambda h: h["validation_accuracy"])
        print(f"best validation {100 * best['validation_accuracy']:.1f} % at epoch {best['epoch']}: "
              f"{Path(args.out) / ('epoch-' + str(best['epoch']))}")


def _convert(args) -> None:
    from .convert import convert_paper_checkpoint
    from .models import WEIGHTS_DIR

    if not Path(args.source).is_file():
        raise CliError(f"no such file: {args.source}")
    out = args.out or str(WEIGHTS_DIR / "wrn-c4-paper")
    try:
        convert_paper_checkpoint(args.source, out)
    except (ValueError, KeyError, OSError) as error:
        raise CliError(str(error)) from None
    print(f"wrote {out}")


def _publish(args) -> None:
    from huggingface_hub import HfApi

    from .models import WEIGHTS_DIR

    # Publishing reads a local folder only: a Hub override in the environment must not redirect the source.
    folder = Path(args.name) if Path(args.name).is_dir() else WEIGHTS_DIR / args.name
    if not (folder / "config.json").is_file() or not (folder / "model.safetensors").is_file():
        raise CliError(f"{args.name} is neither a model folder nor a name in weights/ (config.json and "
                       f"model.safetensors are needed)")
    api = HfApi()
    try:
        api.create_repo(args.repo_id, repo_type="model", private=args.private, exist_ok=True)
        commit = api.upload_folder(folder_path=str(folder), repo_id=args.repo_id, repo_type="model",
                                   commit_message=f"Upload canonicalizer {args.name}")
    except Exception as error:  # network, auth and Hub errors come in many types; all end the same way here
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:160]
        raise CliError(f"publishing to {args.repo_id} failed ({reason}); log in with `hf auth login` or set "
                       f"HF_TOKEN, and check the network") from None
    print(f"published {folder} to {args.repo_id}: {commit}")
    print(f"point the app at it with CANON_CANONICALIZER_REPO={args.repo_id}")


def main(argv: list[str] | None = None) -> int:
    from .models import ModelUnavailableError

    try:
        args = build_parser().parse_args(argv)
        {"segment": _segment, "evaluate": _evaluate, "bench": _bench, "train": _train, "convert": _convert,
         "publish": _publish}[
            args.command](args)
    except (CliError, ModelUnavailableError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
