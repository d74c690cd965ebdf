"""RegAD's published numbers (utils/paper_numbers.csv), shown beside ours in every table.

Source: the official RegAD repository's README (MediaBrain-SJTU/RegAD, its K = 2 / 4 / 8 tables): `paper` = the
paper's numbers (ECCV 2022, Tables 1 and 2), `impl` = the authors' released implementation (their checkpoints).
ResNet-18 (ImageNet), leave-one-category-out training over the other 14 MVTec AD categories, 50 epochs, the epoch
chosen on the target's test AUROC (the official train.py evaluates before each epoch), 10 support sets, mean over
the rounds, in percent. "Detection" there = image AUROC, "Localization" = pixel AUROC. Per-category numbers exist
for the 15 MVTec AD categories; for MPDD only the paper's means over its 6 categories."""
import csv
from pathlib import Path

PAPER_NUMBERS = Path(__file__).with_name("paper_numbers.csv")
METRICS = {"image_auroc": "image", "pixel_auroc": "pixel"}
COLUMNS = {"paper": "paper", "impl": "impl."}  # column of the CSV -> heading in our tables
DATASETS = {"mvtec": "MVTec AD", "mpdd": "MPDD"}
MPDD = ("bracket_black", "bracket_brown", "bracket_white", "connector", "metal_plate", "tubes")


def read_paper_numbers(path=PAPER_NUMBERS):
    """{(dataset, category or 'mean', K): {(metric, column): value in % or None}}."""
    numbers = {}
    with open(path, newline="") as file:
        for row in csv.DictReader(file):
            numbers[(row["dataset"], row["category"], int(row["K"]))] = {
                (metric, column): float(row[f"{prefix}_{column}"]) if row[f"{prefix}_{column}"] else None
                for metric, prefix in METRICS.items() for column in COLUMNS}
    return numbers


def paper_value(numbers, category, k, metric, column):
    """The published per-category number (MVTec AD categories only), or None."""
    return numbers.get(("mvtec", category, k), {}).get((metric, column))


def published_means(numbers, targets, k, metric, column):
    """[(dataset's name, its category count, the published mean)] for each dataset whose categories are all in targets
    (the paper's means are over the whole dataset, so they compare only with a mean over all of it)."""
    datasets = {"mvtec": {c for d, c, _ in numbers if d == "mvtec" and c != "mean"}, "mpdd": set(MPDD)}
    return [(DATASETS[name], len(categories), numbers[(name, "mean", k)][(metric, column)])
            for name, categories in datasets.items() if categories <= set(targets) and (name, "mean", k) in numbers
            and numbers[(name, "mean", k)][(metric, column)] is not None]
