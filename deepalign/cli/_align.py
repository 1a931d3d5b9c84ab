"""``deepalign align``: align model B to model A with a trained Deep-Align aligner."""
import torch

from deepalign._io import load_state_dict, save_state_dict


def _check_same_architecture(sd_a: dict, sd_b: dict, name_a: str, name_b: str) -> None:
    if sd_a.keys() != sd_b.keys():
        only = sorted(set(sd_a) ^ set(sd_b))
        raise SystemExit(f"deepalign align: {name_a} and {name_b} have different architectures: "
                         f"entries only in one of them: {only[:5]}")
    for key in sd_a:
        if sd_a[key].shape != sd_b[key].shape:
            raise SystemExit(f"deepalign align: {name_a} and {name_b} differ at {key!r}: "
                             f"{tuple(sd_a[key].shape)} vs {tuple(sd_b[key].shape)}")


def architecture_names(state_dict: dict, model: torch.nn.Module, path) -> tuple:
    """``state_dict`` under ``model``'s parameter names, and ``{model name: file name}``.

    An aligner binds to an architecture, not to one naming of its parameters: a file whose
    names differ (``seq.0.weight`` where a zoo import wrote ``layers.0.weight``) is matched
    entry by entry in order, when every shape agrees.
    """
    expected = model.state_dict()
    if state_dict.keys() == expected.keys():
        return state_dict, {k: k for k in state_dict}
    shapes = [tuple(v.shape) for v in state_dict.values()]
    if shapes != [tuple(v.shape) for v in expected.values()]:
        raise ValueError(f"{path}: its entries {list(state_dict)[:4]}... with shapes "
                         f"{shapes[:4]}... match the architecture's "
                         f"{list(expected)[:4]}... neither by name nor in order")
    names = dict(zip(expected, state_dict))
    return {k: state_dict[f] for k, f in names.items()}, names


def correction_data(source: str, samples: int = 1000, seed: int = 0) -> torch.Tensor:
    """Inputs a correction measures on: ``samples`` training images of a data set named
    ``source``, or the tensor (or the x of an (x, y) pair) saved in the file ``source``."""
    from deepalign.data import DATASETS, load_dataset

    if source in DATASETS:
        x = load_dataset(source).X_train
        return x[torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:samples]]
    try:
        obj = torch.load(source, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as exc:
        raise SystemExit(f"deepalign align: --data must name a data set ({', '.join(DATASETS)}) "
                         f"or a tensor file; cannot read {source!r}: {exc}") from exc
    if isinstance(obj, (tuple, list)) and len(obj) == 2:
        obj = obj[0]
    if not isinstance(obj, torch.Tensor):
        raise SystemExit(f"deepalign align: --data file {source} must hold a Tensor of inputs "
                         f"or a pair (x, y), got {type(obj).__name__}")
    return obj


def align_files(path_a, path_b, aligner_path, out, merge=None, refine_steps: int = 0,
                dataset=None, seed: int = 0, correction=None, data_source=None) -> dict:
    """Align the network in ``path_b`` to the one in ``path_a``; write it (and the midpoint,
    corrected with ``correction`` measured on ``data_source`` if given) under the names of
    ``path_b``'s entries.

    Returns a summary: the perms' sizes, the largest output change of the permutation (it must
    be rounding), and the paths written.
    """
    from deepalign.baselines import sinkhorn_rebasin
    from deepalign.data import load_dataset
    from deepalign.evaluation import interpolate
    from deepalign.comparison._refine import deep_align_start
    from deepalign.correction import correct_merge
    from deepalign.models import build_model, example_input
    from deepalign.nn import DeepAlign
    from deepalign.weightspace import PermutationSpec, check_equivalent, permute
    from deepalign.zoo import infer_arch

    sd_a, sd_b = load_state_dict(path_a), load_state_dict(path_b)
    _check_same_architecture(sd_a, sd_b, path_a, path_b)
    aligner = DeepAlign.load(aligner_path).eval()
    dataset = dataset or aligner.task.get("dataset")
    data = load_dataset(dataset) if dataset else None
    try:
        config = aligner.task.get("model") or infer_arch(sd_a)
        model = build_model(config)
        example = example_input(config)
        spec = PermutationSpec.from_module(model, example)
        sd_a, _ = architecture_names(sd_a, model, path_a)
        sd_b, file_names = architecture_names(sd_b, model, path_b)
        aligner.check_compatible(spec, sd_a)
    except (ValueError, KeyError) as exc:
        raise SystemExit(f"deepalign align: the aligner {aligner_path} does not fit these "
                         f"networks: {exc}") from exc
    perms, init = deep_align_start(aligner, sd_a, sd_b)
    if refine_steps:
        if data is None:
            raise SystemExit("deepalign align: --refine-steps needs training data: pass "
                             "--dataset (the aligner records none)")
        perms = sinkhorn_rebasin(model, sd_a, sd_b, spec, (data.X_train, data.y_train),
                                 init=init, n_steps=refine_steps, seed=seed, progress=True)
    inputs = data.X_test[:512] if data is not None else torch.randn(256, *example.shape[1:])
    try:
        gap = check_equivalent(model, sd_b, spec, perms, inputs)
    except AssertionError as exc:
        raise SystemExit(f"deepalign align: the permuted B does NOT compute B's function "
                         f"({exc}); nothing written") from exc
    aligned = permute(sd_b, spec, perms)
    save_state_dict({file_names[k]: v for k, v in aligned.items()}, out)
    written = [out]
    if merge:
        if correction:
            source = data_source or dataset
            if source is None:
                raise SystemExit("deepalign align: --correction needs --data (a data set name "
                                 "or a tensor file): the aligner records no data set")
            try:
                merged = correct_merge(model, sd_a, aligned, correction,
                                       correction_data(source, seed=seed))
            except ValueError as exc:
                raise SystemExit(f"deepalign align: {correction}: {exc}") from exc
        else:
            merged = interpolate(sd_a, aligned, 0.5)
        save_state_dict({file_names[k]: v for k, v in merged.items()}, merge)
        written.append(merge)
    return {"perm_sizes": {k: int(v.shape[-1]) for k, v in perms.items()},
            "max_output_change": gap, "written": written}


def _run(args) -> int:
    if args.correction and not args.merge:
        raise SystemExit("deepalign align: --correction applies to the merged model: add --merge")
    summary = align_files(args.model_a, args.model_b, args.aligner, args.out, args.merge,
                          args.refine_steps, args.dataset, args.seed, args.correction, args.data)
    sizes = ", ".join(f"{k} ({n})" for k, n in summary["perm_sizes"].items())
    print(f"aligned {args.model_b} to {args.model_a}: permutations {sizes}")
    print(f"functional equivalence: the aligned B computes the same function as B "
          f"(largest output change {summary['max_output_change']:.2e})")
    print("wrote " + ", ".join(summary["written"]))
    return 0


def register(sub) -> None:
    p = sub.add_parser("align", help="align model B to model A with a trained Deep-Align")
    p.add_argument("model_a", help="state_dict of A (.pt, .pth or .safetensors)")
    p.add_argument("model_b", help="state_dict of B, to be permuted onto A")
    p.add_argument("--aligner", required=True, help="trained Deep-Align file (best.pt)")
    p.add_argument("--out", required=True, help="where to write the aligned B")
    p.add_argument("--merge", help="also write the midpoint (A + aligned B) / 2 here")
    p.add_argument("--correction", choices=("reset_bn", "repair"),
                   help="correct the merged model: re-estimate its BatchNorm statistics, or "
                        "REPAIR its hidden channels' statistics (Jordan et al., ICLR 2023)")
    p.add_argument("--data", help="inputs for --correction: a data set name (1000 of its "
                                  "training images) or a file holding a tensor or (x, y) "
                                  "(default: the aligner's data set)")
    p.add_argument("--refine-steps", type=int, default=0,
                   help="refine with N steps of Sinkhorn re-basin (Deep-Align+Sinkhorn)")
    p.add_argument("--dataset", help="data set for the refinement and the equivalence check "
                                     "(default: the one the aligner was trained on)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=_run)
