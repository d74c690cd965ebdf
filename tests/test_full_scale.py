"""bench/full_scale.py, the full-scale rehearsal, at a small scale: the synthetic dataset has MVTec AD's category
names, image counts, resolutions and greyscale categories (scaled), a binary mask of its image's size per defective
image; the measurement prints load time, peak memory, one epoch and the projection."""
import numpy as np
from PIL import Image

import bench.full_scale as full_scale
from conftest import run_ok
from datasets.mvtec import discover_categories, list_test_set


def test_the_mvtec_counts_are_the_real_datasets():
    assert len(full_scale.MVTEC) == 15
    assert sum(c[0] for c in full_scale.MVTEC.values()) == 3629  # normal training images
    assert sum(c[1] + c[2] for c in full_scale.MVTEC.values()) == 1725  # test images
    assert {c[3] for c in full_scale.MVTEC.values()} <= set(range(700, 1025))


def test_makespan_is_longest_first_on_the_first_free_gpu():
    assert full_scale.makespan([3, 3, 2, 2, 2], 2) == 7
    assert full_scale.makespan([5, 1, 1], 8) == 5 and full_scale.makespan([1] * 6, 1) == 6


def test_a_small_rehearsal_makes_the_dataset_and_measures_it(data_root, tmp_path):
    out = tmp_path / "synthetic"
    run_ok("bench/full_scale.py", "make", "--source", data_root, "--out", out, "--scale", "0.02", "--size_scale",
           "0.1", "--categories", "5", "--workers", "1")
    categories = discover_categories(out)
    assert list(categories) == list(full_scale.MVTEC)[:5]
    for name, (train, good, bad, side, grey) in list(full_scale.MVTEC.items())[:5]:
        category, size = categories[name], round(side * 0.1)
        assert len(category.train_images) == max(3, round(train * 0.02))
        test = list_test_set(category)
        assert sum(i.label for i in test) == max(1, round(bad * 0.02))
        assert len(test) - sum(i.label for i in test) == max(1, round(good * 0.02))
        for path in category.train_images[:2] + [i.path for i in test]:
            with Image.open(path) as img:
                assert img.format == "PNG" and img.size == (size, size) and img.mode == ("L" if grey else "RGB")
        for item in test:
            if item.label:
                mask = np.asarray(Image.open(item.mask_path))
                assert mask.shape == (size, size) and set(np.unique(mask)) == {0, 255}
    report = tmp_path / "report.md"
    printed = run_ok("bench/full_scale.py", "measure", "--data_path", out, "--backbone", "efficientnet_lite0",
                     "--img_size", "64", "--rounds", "1", "--out", report).stdout
    assert printed.strip() == report.read_text().strip()
    train_images = sum(len(c.train_images) for c in categories.values())
    assert f"**Load:** {train_images} training images decoded" in printed and "peak RSS" in printed
    assert "**One training epoch** (train.py, target bottle, K=2" in printed
    assert "| 1 |" in printed and "| 45 |" in printed and "On this CPU" in printed
