"""Evaluate RegAD on categories unseen in training, with the paper's protocol: for each of the fixed
support sets (10 by default), fit per-position Gaussians on the augmented support features and score
every test image. Prints per-round and mean +- std metrics; writes a Markdown table and a JSON file."""
import time
import zlib
from pathlib import Path

import torch

from datasets.mvtec import discover_categories, get_category
from datasets.support_set import read_support_sets, support_source
from models.checkpoint import find_checkpoint, load_model, resolve_checkpoint
from models.config import ModelConfig
from scoring.evaluation import METRICS, STD_DDOF, evaluate, load_test_data
from scoring.patchcore import PatchCoreScorer
from scoring.scorers import GaussianScorer
from utils.cli import Parser, add_data_args, add_device_args, check_writable_dir, command_line, pick_device, run_main
from utils.errors import UserError
from utils.figures import save_test_figures
from utils.hardware import code_version
from utils.io import all_or_nothing, atomic_write_json, atomic_write_text
from utils.tables import markdown_tables

ROOT = Path(__file__).resolve().parent
SCORERS = {"regad": GaussianScorer, "patchcore": PatchCoreScorer}


def parse_args(argv=None):
    parser = Parser(description=__doc__.split("\n")[0])
    parser.add_argument("--obj", help="target category (unseen in training)")
    parser.add_argument("--all", action="store_true", help="every category of --data_path with a test split")
    parser.add_argument("--shot", type=int, nargs="+", default=[2], help="K, one or more (e.g. 2 4 8)")
    add_data_args(parser)
    ModelConfig.add_args(parser, defaults=False)
    add_device_args(parser, training=False)
    parser.add_argument("--checkpoint", default="auto",
                        help="'auto': save_dir/<backbone>/<stn_mode>/<shot>/<obj>/<obj>_<shot>_<stn_mode>_model.pt "
                             "per category and K (of --backbone, or of the only backbone trained); a file (one "
                             "category and K); or 'none': untrained STN (the registration-free baseline)")
    parser.add_argument("--save_dir", default="save_checkpoints", help="where 'auto' looks for checkpoints")
    parser.add_argument("--method", choices=sorted(SCORERS), default="regad",
                        help="regad: per-position Gaussians (the paper); patchcore: nearest-neighbour baseline")
    parser.add_argument("--rounds", type=int, default=10, help="fixed support sets per category and K")
    parser.add_argument("--seed", type=int, default=668, help="seed of generated support sets")
    parser.add_argument("--support_set", help="explicit support file (our .json or the official <K>_10.pt)")
    parser.add_argument("--out", help="output prefix: writes <out>.json and <out>.md (default results/runs/<data>_"
                                      "<obj|all>_<method>_<backbone>_<checkpoint>_k<shots>_<hash of the settings>)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing report at --out")
    parser.add_argument("--allow_target_in_training", action="store_true",
                        help="score a checkpoint trained on the target category too (leakage: not a few-shot "
                             "result; labelled so in every output)")
    parser.add_argument("--save_maps", help="folder for per-image figures of the first support round "
                                            "(input, anomaly map, overlay, ground-truth outline)")
    return parser.parse_args(argv)


def checkpoint_for(args, obj, shot):
    if args.checkpoint == "auto":
        return find_checkpoint(args.save_dir, args.backbone, args.stn_mode, shot, obj)
    return args.checkpoint


def plan(args, options):
    """Validate everything up front, so a mistake fails before any compute: ([(category, shot, checkpoint,
    config)], skipped). A K larger than a category's normal pool skips that pair when other pairs can run."""
    if bool(args.obj) == args.all:
        raise UserError("pass either --obj CATEGORY or --all")
    if min(args.shot) < 1 or args.rounds < 1:
        raise UserError("--shot and --rounds must be at least 1")
    if args.all:
        categories = [c for c in discover_categories(args.data_path).values() if c.has_test]
    else:
        categories = [get_category(args.data_path, args.obj, need_test=True)]
    if (args.support_set or args.checkpoint not in ("none", "auto")) and len(categories) * len(args.shot) > 1:
        raise UserError("--support_set and a --checkpoint file are for one category and one K; "
                        "use --checkpoint auto (or none) with --all or several --shot values")
    jobs, skipped = [], []
    for category in categories:
        for shot in args.shot:
            if shot > len(category.train_images):
                skipped.append({"category": category.name, "shot": shot, "reason": too_large(category, shot)})
                continue
            ckpt = checkpoint_for(args, category.name, shot)
            config, meta, _ = resolve_checkpoint(ckpt, options)
            if trained_on(meta, category.name) and not args.allow_target_in_training:
                raise UserError(f"checkpoint '{ckpt}' was trained on {category.name} itself (its training "
                                f"categories: {', '.join(meta['train_categories'])}), so it is not a few-shot result; "
                                "use a checkpoint trained without it, or --allow_target_in_training to score it "
                                "labelled as leakage")
            jobs.append((category, shot, ckpt, config))
    if not jobs:
        pool = min(len(c.train_images) for c in categories)
        raise UserError(f"{skipped[0]['reason']}; use --shot {pool} or fewer")
    return jobs, skipped


def default_out(args, jobs):
    """results/runs/<data>_<obj|all>_<method>_<backbone>_<checkpoint>_k<shots>_<hash>: readable, and the hash of
    every setting that changes the numbers (data folder, checkpoint files, model settings, rounds, seed, support
    file) keeps two different runs from sharing a name."""
    first_ckpt = jobs[0][2]
    label = {"none": "untrained", "auto": "trained"}.get(str(args.checkpoint), Path(str(first_ckpt)).stem)
    settings = [str(Path(args.data_path).resolve()), args.method, args.rounds, args.seed, args.support_set,
                *[(str(Path(str(c)).resolve()) if str(c) != "none" else "none", k, config.describe())
                  for _, k, c, config in jobs]]
    digest = f"{zlib.crc32(repr(settings).encode()):08x}"[:6]
    dataset = args.dataset or Path(args.data_path).resolve().name
    name = (f"{dataset}_{args.obj or 'all'}_{args.method}_{jobs[0][3].backbone}_{label}_"
            f"k{'-'.join(map(str, args.shot))}_{digest}")
    return ROOT / "results" / "runs" / name


def check_report_free(out, overwrite):
    """An existing report is replaced only with --overwrite."""
    existing = [p for p in (out.with_suffix(".json"), out.with_suffix(".md")) if p.exists()]
    if existing and not overwrite:
        raise UserError(f"'{existing[0]}' holds an earlier report; pass --overwrite to replace it, or another --out")


def trained_on(meta, target):
    """Whether a checkpoint saw the target in training (leakage: not a few-shot result)."""
    return target in meta.get("train_categories", [])


def too_large(category, shot):
    return f"K={shot} is larger than the {len(category.train_images)} normal training images of {category.name}"


def format_round(metrics):
    return "  ".join(f"{m} {metrics[m]:.4f}" for m in METRICS if metrics[m] is not None)


def run(args):
    device = pick_device(args.device)
    options = ModelConfig.options(args)
    jobs, skipped = plan(args, options)
    out = Path(args.out) if args.out else default_out(args, jobs)
    check_report_free(out, args.overwrite)
    check_writable_dir(out.parent)
    if args.save_maps:
        check_writable_dir(args.save_maps)
    for skip in skipped:
        print(f"skipping {skip['category']} K={skip['shot']}: {skip['reason']}")
    tests = {}  # every image decoded and every mask checked before the first evaluation
    for category, _, _, config in jobs:
        if (category.name, config.img_size) not in tests:
            tests[(category.name, config.img_size)] = load_test_data(category, config.img_size)
    found = [support_source(category, shot, args.rounds, args.seed, args.dataset, args.support_set, ROOT)
             for category, shot, _, _ in jobs]
    supports = [read_support_sets(path, category, shot, args.rounds, args.seed, config.img_size)
                for (category, shot, _, config), (path, _) in zip(jobs, found)]
    sources = [description for _, description in found]
    report = {"command": command_line(), "code_version": code_version(), "device": str(device),
              "data_path": str(args.data_path), "dataset": args.dataset, "rounds": args.rounds, "seed": args.seed,
              "method": args.method, "torch": torch.__version__, "std_ddof": STD_DDOF, "results": {},
              "skipped": skipped}
    with all_or_nothing():  # figures and tables replace earlier ones only when the whole run succeeded
        for (category, shot, ckpt, config), support, source in zip(jobs, supports, sources):
            model, meta = load_model(ckpt, options, args.backbone_weights)
            model.to(device)
            report.update(config.as_dict())
            report["protocol"] = protocol_label(meta, args.method, category.name)
            notes = [f"checkpoint trained with K={meta['shot']}, scored with K={shot}"] \
                if meta.get("shot") not in (None, shot) else []
            if len(support) > 1 and all(torch.equal(s, support[0]) for s in support[1:]):
                notes.append(f"all {len(support)} support sets are the same images (the normal pool holds only K): "
                             "one measurement repeated, no spread")
            if trained_on(meta, category.name):
                notes.append(f"LEAKAGE: {category.name} was among the checkpoint's training categories")
            for note in notes:
                print(f"note: {note}")
            test = tests[(category.name, config.img_size)]
            print(f"== {category.name}  K={shot}  checkpoint={ckpt}  ({len(test.labels)} test images, "
                  f"{'with' if test.masks is not None else 'no'} masks; {source})")
            started = time.time()

            def on_round(index, metrics, maps, scores):
                print(f"  round {index}: {format_round(metrics)}", flush=True)
                if args.save_maps and index == 0:  # figures of the first support set
                    save_test_figures(Path(args.save_maps) / category.name / f"k{shot}", test, maps, scores)

            scorer = SCORERS[args.method](model, device, args.eval_batch_size)
            result = evaluate(scorer, test, support, on_round)
            result.update(seconds=time.time() - started, checkpoint=str(ckpt), meta=meta, support=source,
                          protocol=report["protocol"], notes=notes)
            report["results"].setdefault(category.name, {})[str(shot)] = result
            print(f"  mean +- sample std over {len(support)} rounds: {spread_line(result['summary'])}  "
                  f"({result['seconds']:.1f} s)")
        atomic_write_json(out.with_suffix(".json"), report)
        atomic_write_text(out.with_suffix(".md"), markdown_tables(report))
    print(markdown_tables(report))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    return report


def spread_line(summary):
    return "  ".join(f"{m} {s['mean']:.4f}" + (f" +- {s['std']:.4f}" if s["std"] is not None else "")
                     for m, s in summary.items() if s)


def protocol_label(meta, method, target):
    if trained_on(meta, target):
        return (f"LEAKAGE: the checkpoint was trained on {target} itself (--allow_target_in_training); "
                "not a few-shot result")
    if method == "patchcore":
        return f"few-shot PatchCore baseline ({'untrained' if meta.get('checkpoint') == 'none' else 'trained'} network)"
    if meta.get("checkpoint") == "none":
        return "registration-free baseline (untrained identity STN, ImageNet backbone)"
    if meta.get("official_format"):
        return "official checkpoint: epoch selected on test-set AUROC by the official code (optimistic)"
    if meta.get("selected_on_test"):
        return "PAPER PROTOCOL: epoch selected on test-set AUROC (optimistic, not a fair estimate)"
    return "honest: last training epoch, no test-set selection"


if __name__ == "__main__":
    run_main(lambda: run(parse_args()))
