"""``python -m canon.research {probe,orientation,train,tilt-candidates,tilt-network,tilt-lines} ...``: the experiments'
command line, on the library's option groups.

``probe`` fits an equivariant linear probe on the frozen trunk of a canonicalizer and ``orientation`` evaluates one
like ``python -m canon evaluate orientation``; ``train`` is ``python -m canon train`` with distillation from a
teacher (``--teacher``) and learning curves (``--train-fraction``); ``tilt-candidates`` measures three ways of
undoing a tilt side by side, ``tilt-network`` trains a C_N network to read the tilt and sets it beside the edge
stage, fold by fold, and ``tilt-lines`` measures a tilt stage that reads line segments as ``evaluate tilt`` measures
the edge stage.
"""

from __future__ import annotations

import sys

from ..cli import (CliError, Parser, add_command, canonicalizer_default, check_fold, evaluate_orientation,
                   evaluate_tilt, input_size, json_option, json_target, load_canonicalizer, model_options, number,
                   orientation_options, photo_files, run_training, split_options, tilt_options, training_options,
                   whole_number, write_summary, writable_folder)


def build_parser() -> Parser:
    parser = Parser(prog="python -m canon.research", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    probe = add_command(commands, "probe", "fit an equivariant linear probe on a frozen trunk", fit_probe_command)
    probe.add_argument("--images", required=True, help="folder of upright photos (split into train/validation)")
    probe.add_argument("--base", default="wrn-c4-paper", help="canonicalizer (name or folder) whose trunk is used")
    probe.add_argument("--input-size", type=input_size, default=64, help="side of the trunk's input (default 64)")
    probe.add_argument("--crops-per-photo", type=whole_number(1), default=16,
                       help="random views of each photo besides the whole photo (default 16)")
    split_options(probe)
    fraction_option(probe)
    probe.add_argument("--out", required=True, help="folder for the fitted canonicalizer")

    add_command(commands, "orientation", "python -m canon evaluate orientation, for a probe",
                probe_orientation, orientation_options)

    train = add_command(commands, "train", "python -m canon train, with distillation and learning curves",
                        train_command, training_options)
    fraction_option(train)
    train.add_argument("--teacher", default=None,
                       help="distil from this canonicalizer (name or folder), which scores the same crops at its own "
                            "input size, e.g. wrn-c4-paper at 128 px")
    train.add_argument("--distill-weight", type=number(0, 1), default=0.5,
                       help="weight of the distillation term against the prior (with --teacher; default 0.5)")

    candidates = add_command(commands, "tilt-candidates", "three ways of undoing a tilt (the tilt stage, the network "
                             "as its gate, the network on candidate tilts) on the same photos", tilt_candidates_command)
    candidates.add_argument("--images", required=True, help="folder of upright photos")
    candidates.add_argument("--per-fold", type=whole_number(1), default=3,
                            help="photos per fold, spread over the names (default 3; each takes about a minute and a "
                                 "half on two CPU cores)")
    candidates.add_argument("--candidate-step", type=number(0, 90, low_open=True), default=5.0, metavar="DEG",
                            help="the network's candidate tilts, every DEG degrees in [-45, 45) (default 5)")
    model_options(candidates, sam=False)
    json_option(candidates)

    tilt_network = add_command(commands, "tilt-network", "a C_N network trained to read the tilt, beside the edge "
                               "stage, on the validation side of each fold", tilt_network_command)
    tilt_network.add_argument("--images", required=True, help="folder of upright photos")
    tilt_network.add_argument("--group-order", type=whole_number(16), default=16, metavar="N",
                              help="rotations the network is equivariant to, a multiple of 4 (default 16)")
    tilt_network.add_argument("--input-size", type=input_size, default=97,
                              help="side of the network's input, one more than a multiple of 8 (default 97)")
    tilt_network.add_argument("--steps", type=whole_number(1), default=600,
                              help="training steps per fold, 16 crops each (default 600: about 100 s on two CPU cores)")
    tilt_network.add_argument("--angle-step", type=number(0, 360, low_open=True), default=15.0, metavar="DEG",
                              help="the photos are tilted by what multiples of DEG leave beyond quarter turns "
                                   "(default 15)")
    tilt_network.add_argument("--only-fold", type=whole_number(0), action="append", default=None, metavar="K",
                              help="run this fold only (repeatable; default every fold)")
    tilt_network.add_argument("--folds", type=whole_number(2), default=5,
                              help="folds of the grouped split, each trained and read on its own (default 5)")
    json_option(tilt_network)

    add_command(commands, "tilt-lines", "a tilt stage reading line segments (LSD) instead of gradients, alone, per "
                "gate", tilt_lines_command, tilt_options)
    return parser


def fraction_option(parser) -> None:
    parser.add_argument("--train-fraction", type=number(0, 1, low_open=True), default=1.0,
                        help="train on about this share of the training photo groups (default 1; a smaller share's "
                             "photos are a subset of a larger one's, validation unchanged): for learning curves")


def fit_probe_command(args) -> None:
    from .probe import ProbeConfig, fit_probe

    files = photo_files(args.images)
    check_fold(args)
    writable_folder(args.out)
    config = ProbeConfig(crops_per_photo=args.crops_per_photo, fold=args.fold, folds=args.folds,
                         train_fraction=args.train_fraction)
    try:  # a split without training photos, a base that is not a whole trunk
        fit_probe(files, args.out, base=args.base, input_size=args.input_size, config=config)
    except ValueError as error:
        raise CliError(str(error)) from None
    print(f"saved {args.out}")


def probe_orientation(args) -> None:
    from .probe import ProbeCanonicalizer

    if args.canonicalizer is None:
        raise CliError("give the probe's folder with --canonicalizer")
    evaluate_orientation(args, load=lambda args: load_canonicalizer(args, ProbeCanonicalizer))


def train_command(args) -> None:
    objective = None
    if args.teacher is not None:
        from ..canonicalizer import Canonicalizer
        from .distill import Distillation

        teacher = Canonicalizer.load(args.teacher).with_policy(precision="bfloat16" if args.bf16 else "float32")
        objective = Distillation(teacher, weight=args.distill_weight)
    run_training(args, objective=objective, train_fraction=args.train_fraction)


def tilt_candidates_command(args) -> None:
    from .tilt_candidates import compare, spread_over_folds, table

    target = json_target(args.json)
    files = spread_over_folds(photo_files(args.images), args.per_fold)
    summary = compare(load_canonicalizer(args), files, args.canonicalizer or canonicalizer_default(),
                      args.candidate_step)
    write_summary(target, summary, table(summary))


def tilt_lines_command(args) -> None:
    from .tilt_lines import LineSegmentTiltEstimator

    evaluate_tilt(args, LineSegmentTiltEstimator())


def tilt_network_command(args) -> None:
    from ..evaluate import residual_tilts
    from .tilt_network import TiltNetworkConfig, compare, table

    target = json_target(args.json)
    files = photo_files(args.images)
    if args.only_fold and max(args.only_fold) >= args.folds:
        raise CliError(f"--only-fold takes 0 to {args.folds - 1} with --folds {args.folds}")
    if residual_tilts(args.angle_step) == [0.0]:
        raise CliError("--angle-step leaves no tilt beyond quarter turns: take one that is not a multiple of 90")
    try:
        config = TiltNetworkConfig(group_order=args.group_order, input_size=args.input_size, steps=args.steps)
    except ValueError as error:
        raise CliError(str(error)) from None
    summary = compare(files, config, args.angle_step, args.folds,
                      tuple(sorted(set(args.only_fold))) if args.only_fold else None)
    write_summary(target, summary, table(summary))


if __name__ == "__main__":
    from ..cli import main

    sys.exit(main(parser=build_parser()))
