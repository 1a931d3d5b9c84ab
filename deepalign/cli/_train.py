"""``deepalign train``: train a Deep-Align aligner on a zoo (data-parallel under torchrun)."""
import os
from dataclasses import fields

from deepalign.nn import PRESETS
from deepalign.training import Augmentation, TrainConfig, train

# flag -> (EncoderConfig field, type); "encoder_dropout" because --dropout is the augmentation
_ENCODER_FLAGS = {"hidden": ("hidden", int), "n_hidden": ("n_hidden", int),
                  "out_features": ("out_features", int), "set_layer": ("set_layer", str),
                  "heads": ("heads", int), "reduction": ("reduction", str),
                  "downsample": ("downsample", int), "encoder_dropout": ("dropout", float),
                  "graph_layers": ("n_layers", int)}


#: ``--time-limit`` without ``--steps``: the clock alone ends the run
UNBOUNDED_STEPS = 10 ** 9


def _steps_for_time_limit(args) -> None:
    """A time-limited run trains until its limit, not until the default step count (a cosine
    schedule then decays over the limit)."""
    if args.time_limit and args.steps is None:
        args.steps = UNBOUNDED_STEPS


def _run(args) -> int:
    _steps_for_time_limit(args)
    overrides = {field: getattr(args, flag) for flag, (field, _) in _ENCODER_FLAGS.items()
                 if getattr(args, flag) is not None}
    for flag in ("weight_similarity", "normalize_layers", "io_linear"):
        if getattr(args, flag):
            overrides[flag] = True
    train_fields = {f.name for f in fields(TrainConfig)} - {"augmentation"}
    aug = {f.name: getattr(args, f.name) for f in fields(Augmentation)
           if getattr(args, f.name) is not None}
    config = TrainConfig(**{k: getattr(args, k) for k in train_fields
                            if getattr(args, k) is not None},
                         augmentation={**vars(Augmentation()), **aug})
    if args.encoder == "graph" and args.config != "default":
        raise SystemExit("deepalign train: --config presets are DWS encoders; with --encoder "
                         "graph configure it with --hidden, --out-features, --graph-layers")
    encoder = "graph" if args.encoder == "graph" else args.config
    aligner = train(args.zoo, args.out, encoder, config, resume=args.resume,
                    device=args.device, progress=not args.no_progress,
                    tensorboard=args.tensorboard, **overrides)
    if int(os.environ.get("RANK", "0")):
        return 0  # one report per run, from rank 0
    n = sum(p.numel() for p in aligner.parameters())
    print(f"trained a {n:,}-parameter aligner; files in {args.out} "
          "(best.pt, final.pt, checkpoint.pt, metrics.csv, curves.png)")
    return 0


def register(sub) -> None:
    p = sub.add_parser("train", help="train a Deep-Align aligner on a model zoo",
                       description="Label-free training of Deep-Align on a zoo. Runs "
                       "data-parallel under `torchrun --nproc_per_node N`.")
    p.add_argument("--zoo", required=True, help="zoo directory (deepalign zoo ...)")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--config", default="default", choices=sorted(PRESETS),
                   help="encoder preset (default: %(default)s)")
    p.add_argument("--encoder", default="dws", choices=["dws", "graph"],
                   help="dws: the DWS layer-chain encoder (MLPs, CNNs); graph: the graph "
                   "encoder over the permutation spec (any architecture: ResNets, BatchNorm, "
                   "heads) (default: %(default)s)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--device", default="cpu")
    p.add_argument("--tensorboard", action="store_true", help="also log to OUT/tensorboard")
    p.add_argument("--no-progress", action="store_true")
    g = p.add_argument_group("training (default: TrainConfig)")
    for f in fields(TrainConfig):
        if f.name != "augmentation":
            g.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=None,
                           help=f"default {f.default}")
    g = p.add_argument_group("augmentations")
    for f in fields(Augmentation):
        g.add_argument("--" + f.name.replace("_", "-"), type=float, default=None,
                       help=f"default {f.default}")
    g = p.add_argument_group("encoder overrides of the preset")
    for flag, (_, kind) in _ENCODER_FLAGS.items():
        g.add_argument("--" + flag.replace("_", "-"), type=kind, default=None)
    g.add_argument("--weight-similarity", action="store_true",
                   help="add a learned multiple of weight matching's similarity of the raw "
                   "weights to the learned one (DWS encoder)")
    g.add_argument("--normalize-layers", action="store_true",
                   help="divide each layer by its weights' RMS before the encoder (DWS encoder)")
    g.add_argument("--io-linear", action="store_true",
                   help="compare first- and last-hidden neurons by full linear maps of their "
                   "weights over the fixed inputs and outputs (DWS encoder; in distribution)")
    p.set_defaults(run=_run)
