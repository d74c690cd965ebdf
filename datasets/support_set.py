"""Fixed support sets: the paper scores each (category, K) on the same 10 support sets for every method.

The official code ships them as tensors (support_set/<category>/<K>_10.pt) on a file host; we ship JSON
lists of train/good file names, generated reproducibly from a seed, and read both formats:

    python -m datasets.support_set --data_path ../shared/data/mvtec-mini --shots 2 4 8 --rounds 10 --seed 668
"""
import json
import random
import zlib
from pathlib import Path

import torch
import torch.nn.functional as F

from datasets.mvtec import discover_categories, folders_without_training_images, get_category, load_image
from utils.cli import Parser, run_main
from utils.errors import UserError
from utils.io import all_or_nothing, atomic_write_text, read_torch_file

REPO_ROOT = Path(__file__).resolve().parents[1]


def support_file(folder, dataset, category, shot, rounds):
    return Path(folder) / dataset / category / f"{shot}_{rounds}.json"


def default_support_path(repo_root, dataset, category, shot, rounds):
    """The committed file: <repo>/support_set/<dataset>/<category>/<K>_<rounds>.json."""
    return support_file(Path(repo_root) / "support_set", dataset, category, shot, rounds)


def generate_support_sets(train_names, shot, rounds, seed, category):
    """rounds sorted lists of shot distinct names. Seeded with a stable hash (not hash(), which changes
    between runs) so the same (seed, category, K) gives the same sets on every machine."""
    if shot > len(train_names):
        raise UserError(f"K={shot} is larger than the {len(train_names)} normal training images of {category}; "
                        f"use --shot {len(train_names)} or fewer")
    if shot < 1 or rounds < 1:
        raise UserError(f"K ({shot}) and the number of rounds ({rounds}) must be at least 1")
    rng = random.Random(zlib.crc32(f"{seed}/{category}/{shot}".encode()))
    pool = sorted(train_names)
    return [sorted(rng.sample(pool, shot)) for _ in range(rounds)]


def support_text(dataset, category, shot, seed, sets):
    """JSON with one round per line, so the committed files stay short and diffs readable."""
    header = json.dumps({"dataset": dataset, "category": category, "shot": shot, "rounds": len(sets),
                         "seed": seed}, indent=1)[:-2]  # drop the closing "\n}"
    rows = ",\n  ".join(json.dumps(names) for names in sets)
    return f'{header},\n "sets": [\n  {rows}\n ]\n}}\n'


def save_support_sets(path, dataset, category, shot, seed, sets):
    atomic_write_text(path, support_text(dataset, category, shot, seed, sets))


def load_support_sets(path, category, img_size, shot=None):
    """One uint8 [K, 3, img_size, img_size] tensor per round, from our JSON or an official <K>_10.pt.
    shot, when given, must match the file's K."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"support set file '{path}' does not exist; create it with "
                        f"python -m datasets.support_set --data_path DATA --shots {shot or 'K'}")
    if path.suffix == ".json":
        rounds = read_json_sets(path, category, img_size)
    elif path.suffix == ".pt":
        rounds = read_official_sets(path, img_size)
    else:
        raise UserError(f"support set file '{path}' must be a .json (ours) or an official .pt file")
    if shot is not None and any(len(r) != shot for r in rounds):
        raise UserError(f"'{path}' holds {len(rounds[0])}-shot support sets but K={shot} was asked; "
                        f"pass the file for K={shot}")
    return rounds


def official_support_path(root, category, shot, rounds):
    """Where the official test.py reads its fixed sets: support_set/<category>/<K>_<rounds>.pt in the checkout,
    where its README unpacks the released support files."""
    return Path(root) / "support_set" / category / f"{shot}_{rounds}.pt"


def support_source(category, shot, rounds, seed, dataset, explicit=None, root=REPO_ROOT):
    """(path or None, description) of the sets a run is scored on, first found of: the explicit file; the official
    <K>_<rounds>.pt (so the numbers stay comparable with the paper's); our committed JSON for (dataset, category,
    K, rounds) when made with this seed; else None: the same sets generated from seed."""
    if explicit:
        return Path(explicit), f"support file {explicit}"
    official = official_support_path(root, category.name, shot, rounds)
    if official.is_file():
        return official, f"official support file {relative(official, root)}"
    dataset = dataset or category.root.resolve().parent.name
    path = default_support_path(root, dataset, category.name, shot, rounds)
    if path.is_file() and stored_seed(path) in (seed, None):  # None: unreadable, let the loader say why
        return path, f"support file {relative(path, root)}"
    return None, f"support sets generated from seed {seed}"


def relative(path, root):
    return path.relative_to(root) if path.is_relative_to(root) else path


def support_sets_for(category, shot, rounds, seed, dataset, img_size, explicit=None, root=REPO_ROOT):
    """The support sets a run is scored on (support_source says which)."""
    path, _ = support_source(category, shot, rounds, seed, dataset, explicit, root)
    return read_support_sets(path, category, shot, rounds, seed, img_size)


def read_support_sets(path, category, shot, rounds, seed, img_size):
    """The sets of a path that support_source found, or, for None, those generated from seed."""
    if path is None:
        sets = generate_support_sets([p.name for p in category.train_images], shot, rounds, seed, category.name)
        return decode_sets(sets, category, img_size)
    sets = load_support_sets(path, category, img_size, shot=shot)
    if len(sets) != rounds:
        raise UserError(f"'{path}' holds {len(sets)} support sets but --rounds is {rounds}; "
                        f"pass --rounds {len(sets)}")
    return sets


def stored_seed(path):
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("seed")
    except (ValueError, AttributeError):
        return None


def decode_sets(sets, category, img_size):
    """Names of train/good images -> one uint8 [K, 3, S, S] tensor per round, each image decoded once."""
    by_name = {p.name: p for p in category.train_images}
    decoded = {name: load_image(by_name[name], img_size) for name in {n for names in sets for n in names}}
    return [torch.stack([decoded[name] for name in names]) for names in sets]


def read_json_sets(path, category, img_size):
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        sets = doc["sets"]
        stored_category = doc["category"]
    except (ValueError, KeyError, TypeError):
        raise UserError(f"'{path}' is not a support set file (needs 'category' and 'sets'); regenerate it with "
                        "python -m datasets.support_set")
    if stored_category != category.name:
        raise UserError(f"'{path}' holds support sets of {stored_category}, not {category.name}; "
                        f"pass the file for {category.name}")
    if not (isinstance(sets, list) and sets and all(isinstance(names, list) for names in sets)
            and len({len(names) for names in sets}) == 1):
        raise UserError(f"'{path}' must hold at least one round of names, all with the same K; regenerate it with "
                        "python -m datasets.support_set")
    known = {p.name for p in category.train_images}
    missing = [name for names in sets for name in names if name not in known]
    if missing:
        raise UserError(f"support image '{missing[0]}' listed in '{path}' is not in "
                        f"{category.root / 'train' / 'good'}; regenerate with python -m datasets.support_set")
    return decode_sets(sets, category, img_size)


def read_official_sets(path, img_size):
    """The official tensors: [rounds][K, 3, H, W] float in [0, 1] (un-normalised); resized if H != img_size."""
    fix = "pass an official <K>_10.pt file or one of our .json files"
    rounds = list(read_torch_file(path, "official support set", missing=fix, unreadable=fix))
    if not rounds or not all(torch.is_tensor(r) and r.dim() == 4 and r.size(1) == 3 for r in rounds):
        raise UserError(f"'{path}' must hold [rounds][K, 3, H, W] image tensors like the official <K>_10.pt")
    converted = []
    for images in rounds:
        images = images.float()
        if images.min() < 0 or images.max() > 1:
            raise UserError(f"'{path}' holds values outside [0, 1] (normalised images?); "
                            "pass the official un-normalised support tensors")
        if images.shape[-2:] != (img_size, img_size):
            images = F.interpolate(images, size=(img_size, img_size), mode="bilinear", antialias=True,
                                   align_corners=False).clamp(0, 1)
        converted.append((images * 255).round().to(torch.uint8))
    return converted


def main(argv=None):
    parser = Parser(description="Write the fixed support sets of every target category.")
    parser.add_argument("--data_path", required=True, help="MVTec-layout folder (CAT/train/good, CAT/test)")
    parser.add_argument("--dataset", help="name of the sub-folder of --out (default: the data folder's name)")
    parser.add_argument("--shots", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seed", type=int, default=668)
    parser.add_argument("--out", default=str(REPO_ROOT / "support_set"))
    parser.add_argument("--categories", nargs="+", help="default: every category with a test split")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace existing files that hold other sets (e.g. the committed ones)")
    args = parser.parse_args(argv)

    dataset = args.dataset or Path(args.data_path).resolve().name
    if args.categories:
        categories = [get_category(args.data_path, name, need_test=True) for name in args.categories]
    else:
        categories = [c for c in discover_categories(args.data_path).values() if c.has_test]
        for folder in folders_without_training_images(args.data_path):
            print(f"skipping {folder.name}: no images in {folder / 'train' / 'good'}")
    files = {}  # path -> (category, text); all checked before anything is written
    for category in categories:
        names = [p.name for p in category.train_images]
        for shot in args.shots:
            if shot > len(names):
                print(f"skipping {category.name} K={shot}: only {len(names)} normal training images")
                continue
            sets = generate_support_sets(names, shot, args.rounds, args.seed, category.name)
            decode_sets(sets, category, 16)  # a corrupt training image is named now, not later by test.py
            text = support_text(dataset, category.name, shot, args.seed, sets)
            files[support_file(args.out, dataset, category.name, shot, args.rounds)] = text
    if not files:
        raise UserError(f"nothing to write: no category of '{args.data_path}' with a test split has at least "
                        f"{min(args.shots)} normal training images; pass smaller --shots or other --categories")
    status = {p: "wrote" if not p.is_file() else "unchanged" if p.read_text(encoding="utf-8") == text else "replaced"
              for p, text in files.items()}
    replaced = [p for p, done in status.items() if done == "replaced"]
    if replaced and not args.overwrite:
        raise UserError(f"'{replaced[0]}' exists and holds other support sets ({len(replaced)} such file(s)); pass "
                        "--overwrite to replace them, or --out DIR to write elsewhere")
    with all_or_nothing():
        for path, text in files.items():
            if status[path] != "unchanged":
                atomic_write_text(path, text)
    for path, done in status.items():
        print(f"{done} {path}")


if __name__ == "__main__":
    run_main(main)
