"""``deepalign zoo``: train a model zoo; ``deepalign zoo import``: turn state dicts into one."""
import argparse
import os

from deepalign.data import DATASETS, load_dataset
from deepalign.zoo import TrainSettings, Zoo, import_zoo, parse_shard, plot_zoo, train_zoo


# digits CNNs, 16 models x 20 epochs: mean test accuracy 0.983 at 3e-3, 0.978 at 1e-3
_DEFAULT_LR = {"mlp": 1e-3, "cnn": 3e-3, "siren": 1e-3, "resnet": 3e-3, "vit": 1e-3}


def _ints(text: str) -> list:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints, got {text!r}") from exc


def _range(text: str) -> tuple:
    try:
        parts = [float(x) for x in text.split(":")]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a number or lo:hi, got {text!r}") from exc
    if len(parts) not in (1, 2):
        raise argparse.ArgumentTypeError(f"expected a number or lo:hi, got {text!r}")
    return (parts[0], parts[-1])


def _arch(args, data) -> dict:
    if args.arch == "siren":
        return {"arch": "siren", "in_features": 2, "hidden": args.hidden,
                "out_features": data.image_shape[0], "w0": 30.0, "offset": 0.5}
    if args.arch == "mlp":
        return {"arch": "mlp", "in_features": data.in_features, "hidden": args.hidden,
                "out_features": data.num_classes}
    if args.arch == "resnet":
        return {"arch": "resnet", "in_channels": data.image_shape[0],
                "depth": args.depth or 8, "width": args.width or 1.0,
                "out_features": data.num_classes, "image_size": list(data.image_shape[1:]),
                "stem_stride": args.stem_stride}
    if args.arch == "vit":
        width = int(args.width or 64)
        if width != (args.width or 64):
            raise ValueError(f"--width of a ViT is its stream width, an int; got {args.width}")
        return {"arch": "vit", "in_channels": data.image_shape[0],
                "image_size": list(data.image_shape[1:]), "patch_size": args.patch_size,
                "width": width, "depth": args.depth or 2, "heads": args.heads,
                "hidden": args.mlp_hidden or 2 * width, "out_features": data.num_classes}
    return {"arch": "cnn", "in_channels": data.image_shape[0], "channels": args.channels,
            "out_features": data.num_classes, "image_size": list(data.image_shape[1:]),
            "pool": args.pool}


def _summary(zoo: Zoo) -> str:
    name = zoo.main_metric
    value = zoo.metric(name)
    return (f"{zoo!r}\n  {name}: mean {value.mean():.4f}, min {value.min():.4f}, "
            f"max {value.max():.4f}\n  split: " +
            ", ".join(f"{k} {len(v)}" for k, v in zoo.split.items()))


def _errors_as_messages(run):
    """Bad input ends the command with its message instead of a traceback."""
    def wrapped(args) -> int:
        try:
            return run(args)
        except (ValueError, FileNotFoundError, FloatingPointError) as exc:
            raise SystemExit(f"deepalign zoo: error: {exc}") from exc
    return wrapped


def _run_train(args) -> int:
    if args.out is None or args.dataset is None:
        raise SystemExit("deepalign zoo: --dataset and --out are required to train a zoo")
    data = load_dataset(args.dataset, root=args.data_root)
    settings = TrainSettings(epochs=args.epochs, batch_size=args.batch_size,
                             lr=args.lr or _DEFAULT_LR[args.arch],
                             weight_decay=args.weight_decay, schedule=args.lr_schedule)
    zoo = train_zoo(args.out, args.dataset, _arch(args, data), args.count, settings,
                    seed=args.seed, chunk_size=args.chunk_size, shard=parse_shard(args.shard),
                    val=args.val, test=args.test, views=args.views, data_root=args.data_root,
                    progress=not args.quiet, train_subset=args.train_subset)
    if zoo is None:
        print(f"{args.out}: this shard is done; the zoo completes when every shard has run")
    else:
        print(_summary(zoo) + f"\n  plot: {plot_zoo(zoo, os.path.join(args.out, 'metrics.png'))}")
    return 0


def _run_import(args) -> int:
    zoo = import_zoo(args.source, args.out, split_file=args.split_file, dataset=args.dataset,
                     seed=args.seed)
    print(f"{zoo!r}\n  split: " + ", ".join(f"{k} {len(v)}" for k, v in zoo.split.items()))
    return 0


def register(sub) -> None:
    p = sub.add_parser("zoo", help="train a zoo of small models (or import one: zoo import)",
                       description="Train COUNT models at once on an offline data set into a "
                                   "resumable zoo directory (safetensors shards + manifest.json).")
    p.add_argument("--dataset", choices=DATASETS, help="training data")
    p.add_argument("--data-root", help="directory (or file) to read the data set from")
    p.add_argument("--arch", choices=("mlp", "cnn", "resnet", "vit", "siren"), default="mlp",
                   help="classifiers (mlp, cnn, resnet, vit) or SIREN fits of the training "
                        "images (siren)")
    p.add_argument("--hidden", type=_ints, default=[32, 32],
                   help="MLP / SIREN hidden widths, e.g. 32,32")
    p.add_argument("--views", type=int, default=1,
                   help="SIREN: independent fits per image (model i fits image i // views)")
    p.add_argument("--channels", type=_ints, default=[16, 32, 32],
                   help="CNN channels, e.g. 16,32,32")
    p.add_argument("--pool", type=_ints, default=None,
                   help="0-based CNN convs followed by 2x2 max-pool (default: all but the last)")
    p.add_argument("--depth", type=int, default=None,
                   help="ResNet depth, 6 n + 2 (n BasicBlocks per stage): 8 (default), 14, "
                        "20, ...; ViT: number of blocks (default 2)")
    p.add_argument("--width", type=float, default=None,
                   help="ResNet width multiplier k: stages of 16k, 32k, 64k channels "
                        "(default 1); ViT: the residual stream's width (default 64)")
    p.add_argument("--heads", type=int, default=4, help="ViT attention heads")
    p.add_argument("--patch-size", type=int, default=7, help="ViT patch size (pixels)")
    p.add_argument("--mlp-hidden", type=int, default=None,
                   help="ViT MLP width (default: twice the stream width)")
    p.add_argument("--stem-stride", type=int, default=1,
                   help="ResNet stem stride (2 quarters the cost on 28x28 images)")
    p.add_argument("--train-subset", type=int, default=None,
                   help="classifiers train on the first N training images only (recorded in "
                        "the zoo, so resuming checks it)")
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=_range, default=None,
                   help="AdamW learning rate, or lo:hi drawn log-uniformly per model "
                        "(default: 3e-3 for cnn and resnet, 1e-3 otherwise)")
    p.add_argument("--lr-schedule", choices=("constant", "cosine"), default="constant",
                   help="learning rate over the training steps: constant, or cosine decay to 0")
    p.add_argument("--weight-decay", type=_range, default=(0.0, 0.0),
                   help="decoupled weight decay, or lo:hi drawn uniformly per model")
    p.add_argument("--seed", type=int, default=0, help="fixes every random choice")
    p.add_argument("--chunk-size", type=int, default=250,
                   help="models trained together and written per shard file")
    p.add_argument("--shard", default="0/1",
                   help="K/N: train the K-th (0-based) of N disjoint parts of the zoo into the "
                        "same --out; 'auto' takes torchrun's RANK/WORLD_SIZE")
    p.add_argument("--val", type=float, default=0.1, help="fraction of models in the val split")
    p.add_argument("--test", type=float, default=0.1, help="fraction of models in the test split")
    p.add_argument("--out", help="zoo directory (re-running resumes)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=_errors_as_messages(_run_train))

    actions = p.add_subparsers(dest="zoo_action", metavar="ACTION")
    imp = actions.add_parser("import", help="make a zoo from a folder of .pt/.pth state dicts",
                             description="Import a folder of .pt/.pth state dicts (e.g. the "
                                         "Deep-Align authors' zoos: .pth files plus a JSON split "
                                         "file) as a zoo; the MLP architecture is inferred.")
    imp.add_argument("source", help="folder of .pt/.pth files")
    imp.add_argument("--out", required=True, help="zoo directory to create")
    imp.add_argument("--split-file",
                     help="JSON {train, val, test: [paths]} (default: one found in the folder, "
                          "else a seeded 80/10/10 split)")
    imp.add_argument("--dataset", help="name of the data set the models were trained on")
    imp.add_argument("--seed", type=int, default=0, help="seed of the split when there is no file")
    imp.set_defaults(run=_errors_as_messages(_run_import))
