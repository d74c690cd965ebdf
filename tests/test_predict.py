"""predict.py and test.py --save_maps end to end on real bottle images (CPU, efficientnet_lite0 at 96 px so
the module stays well under a minute). Each CLI call runs once, in a module-scoped fixture."""
import csv
import html
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.ndimage import gaussian_filter

from conftest import assert_one_line_error, run_cli, run_ok
from datasets.mvtec import load_image
from models.config import ModelConfig
from models.regad import RegAD
from scoring.augment import augment_support
from test_gaussian import naive_distances

FAST = ["--backbone", "efficientnet_lite0", "--img_size", "96", "--device", "cpu"]
FAST_CONFIG = ModelConfig("efficientnet_lite0", img_size=96)
GOOD = ["good/000.jpg", "good/001.jpg", "good/002.jpg", "good/003.jpg"]
DEFECTIVE = ["broken_large/000.jpg", "broken_large/001.jpg", "contamination/000.jpg", "contamination/001.jpg"]


def read_scores(folder):
    with open(folder / "scores.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        return reader.fieldnames, list(reader)


def printed_threshold(stdout):
    """The threshold on predict.py's final 'scored ... at threshold X' line (3 decimals)."""
    return float(re.search(r"at threshold (-?\d+\.\d+)", stdout).group(1))


def saved_info(path):
    return torch.load(path, map_location="cpu", weights_only=True)["info"]


def assert_valid_png(path):
    """A real, decodable figure of the expected shape (three panels side by side), not a blank canvas."""
    with Image.open(path) as image:
        assert image.format == "PNG", path
        image.verify()
    with Image.open(path) as image:
        image.load()
        width, height = image.size
        low, high = image.convert("L").getextrema()
    assert 400 <= width <= 2000 and 150 <= height <= 1000 and width > 2 * height, (path, image.size)
    assert high - low > 50, f"{path} is nearly uniform"


@pytest.fixture(scope="module")
def bottle(data_root):
    return data_root / "bottle"


@pytest.fixture(scope="module")
def support(bottle):
    return [bottle / "train" / "good" / f"{i:03d}.jpg" for i in range(4)]


@pytest.fixture(scope="module")
def images(bottle, tmp_path_factory):
    """4 good + 4 defective test images copied under distinct names, plus one undecodable file."""
    folder = tmp_path_factory.mktemp("images")
    for name in GOOD + DEFECTIVE:
        shutil.copy(bottle / "test" / name, folder / name.replace("/", "_"))
    (folder / "broken.png").write_bytes(b"\x00not a png at all\xff" * 20)
    return folder


@pytest.fixture(scope="module")
def fitted(support, images, tmp_path_factory):
    """Fit on the support images, score the folder, save the fit."""
    work = tmp_path_factory.mktemp("fitted")
    result = run_ok("predict.py", "--support", *support, "--images", images, "--out", work / "out",
                    "--save_model", work / "fit.pt", *FAST)
    return {"result": result, "out": work / "out", "model": work / "fit.pt"}


@pytest.fixture(scope="module")
def reloaded(fitted, images, tmp_path_factory):
    """Score the same folder from the saved fit, without support images."""
    out = tmp_path_factory.mktemp("reloaded") / "out"
    return {"result": run_ok("predict.py", "--model", fitted["model"], "--images", images, "--out", out,
                             "--device", "cpu"), "out": out}


@pytest.fixture(scope="module")
def refitted(support, bottle, tmp_path_factory):
    """A fresh fit on the same support, scoring a different set of images."""
    work = tmp_path_factory.mktemp("refitted")
    others = [bottle / "test" / "broken_small" / "000.jpg", bottle / "test" / "good" / "000.jpg"]
    result = run_ok("predict.py", "--support", *support, "--images", *others, "--out", work / "out",
                    "--save_model", work / "fit.pt", *FAST)
    return {"result": result, "out": work / "out", "model": work / "fit.pt"}


@pytest.fixture(scope="module")
def saved_maps(data_root, tmp_path_factory):
    work = tmp_path_factory.mktemp("maps")
    run_ok("test.py", "--obj", "bottle", "--checkpoint", "none", "--rounds", "1", "--shot", "2",
           "--data_path", data_root, "--out", work / "r", "--save_maps", work / "maps", *FAST)
    return work / "maps" / "bottle" / "k2"


def test_predict_scores_every_readable_image_and_names_the_corrupt_one(fitted, images):
    """A bad file among many must not abort the run, must be reported, and must not get a row."""
    assert fitted["result"].returncode == 0
    assert "broken.png" in fitted["result"].stderr
    fields, rows = read_scores(fitted["out"])
    assert fields == ["file", "score", "decision", "threshold"]
    expected = sorted(str(p) for p in images.iterdir() if p.name != "broken.png")
    assert len(rows) == 8 and sorted(r["file"] for r in rows) == expected
    threshold = saved_info(fitted["model"])["threshold"]
    for row in rows:
        assert float(row["threshold"]) == pytest.approx(threshold, abs=1e-9), row
        assert np.isfinite(float(row["score"])) and float(row["score"]) > 0, row
        assert row["decision"] == ("anomalous" if float(row["score"]) > threshold else "normal"), row


def test_predict_defective_images_score_higher_than_good_ones(fitted):
    """The point of the tool: defects raise the image score, even with 4 support images and no training."""
    scores = {Path(r["file"]).name: float(r["score"]) for r in read_scores(fitted["out"])[1]}
    good = [scores[n.replace("/", "_")] for n in GOOD]
    defective = [scores[n.replace("/", "_")] for n in DEFECTIVE]
    assert np.mean(defective) > np.mean(good), (good, defective)


def test_predict_gallery_is_sorted_by_descending_score(fitted):
    """index.html lists every scored image once, most anomalous first, each with its figure."""
    page = (fitted["out"] / "index.html").read_text()
    listed = re.findall(r"<tr><td>\d+</td><td>([^<]*)</td><td>([-\d.]+)</td><td>(\w+)</td>"
                        r"<td><a href='([^']*)'>", page)
    scores = {r["file"]: float(r["score"]) for r in read_scores(fitted["out"])[1]}
    assert [f for f, _, _, _ in listed] == sorted(scores, key=lambda f: -scores[f])
    shown = [float(s) for _, s, _, _ in listed]
    assert shown == sorted(shown, reverse=True) and len(shown) == 8


def test_predict_figures_are_valid_pngs(fitted):
    """Every figure the gallery links is a decodable PNG, and no stray or temporary file is left."""
    page = (fitted["out"] / "index.html").read_text()
    linked = sorted(set(re.findall(r"src='(figures/[^']+\.png)'", page)))
    assert len(linked) == 8
    on_disk = sorted(str(p.relative_to(fitted["out"])) for p in (fitted["out"] / "figures").iterdir())
    assert on_disk == linked
    for figure in linked:
        assert_valid_png(fitted["out"] / figure)


def test_saved_model_reproduces_scores_and_threshold(fitted, reloaded):
    """--model must give the fit that --save_model stored: same scores, decisions and threshold."""
    _, first = read_scores(fitted["out"])
    _, second = read_scores(reloaded["out"])
    assert [r["file"] for r in first] == [r["file"] for r in second]
    np.testing.assert_allclose([float(r["score"]) for r in second], [float(r["score"]) for r in first],
                               rtol=1e-6, atol=0)
    assert [r["decision"] for r in first] == [r["decision"] for r in second]
    assert printed_threshold(reloaded["result"].stdout) == printed_threshold(fitted["result"].stdout)
    assert printed_threshold(fitted["result"].stdout) == pytest.approx(saved_info(fitted["model"])["threshold"],
                                                                       abs=5e-4)


def independent_leave_one_out_scores(paths):
    """[K, 22]: the scores of each support image's 22 augmentations under the Gaussians of the others' 22
    augmentations, the official way and written out here: restored maps, coarser stages repeated to the finest
    grid (embedding_concat), covariance + 0.01 I inverted per position, the Mahalanobis map upsampled and blurred
    with scipy, its max."""
    model = RegAD(FAST_CONFIG)
    model.load_backbone_weights()
    model.eval()
    images = torch.stack([load_image(p, FAST_CONFIG.img_size) for p in paths]).float() / 255

    def embed(x):
        restored = model.STN(x).restored
        return torch.cat([F.interpolate(r, size=restored[0].shape[-2:], mode="nearest") for r in restored], 1)

    scores = []
    with torch.no_grad():
        for i in range(len(images)):
            others = torch.cat([images[:i], images[i + 1:]])
            distances = naive_distances(embed(augment_support(others)), embed(augment_support(images[i:i + 1])))
            upsampled = F.interpolate(distances[:, None], size=FAST_CONFIG.img_size, mode="bilinear",
                                      align_corners=False)[:, 0]
            scores.append([gaussian_filter(m.numpy(), sigma=4).max() for m in upsampled])
    return np.array(scores)


def test_threshold_comes_from_the_support_images_only(fitted, refitted, support):
    """The leave-one-out scores (22 per support image, not K numbers) equal an independent computation, the
    threshold is their (1 - FPR) quantile, and scoring other images with the same support gives exactly the same
    threshold."""
    info, other = saved_info(fitted["model"]), saved_info(refitted["model"])
    assert info["support"] == [str(p) for p in support]
    expected = independent_leave_one_out_scores(support)
    assert np.shape(info["loo_scores"]) == (4, 22)
    np.testing.assert_allclose(info["loo_scores"], expected, rtol=1e-4)
    assert info["threshold"] == pytest.approx(float(np.quantile(expected, 1 - 0.05)), rel=1e-4)
    assert info["threshold"] < expected.max()  # not simply the largest score, as the quantile of 4 numbers was
    low, high = info["interval"]
    assert low <= info["threshold"] <= high and (info["n_images"], info["n_scores"]) == (4, 88)
    assert info["fpr"] == 0.05  # predict.py's default
    assert other["threshold"] == pytest.approx(info["threshold"], rel=1e-6)
    assert printed_threshold(refitted["result"].stdout) == printed_threshold(fitted["result"].stdout)
    # the same image scores the same under the second, independent fit (the fit itself is deterministic)
    first = {Path(r["file"]).name: float(r["score"]) for r in read_scores(fitted["out"])[1]}
    second = {Path(r["file"]).parent.name + "_" + Path(r["file"]).name: float(r["score"])
              for r in read_scores(refitted["out"])[1]}
    assert second["good_000.jpg"] == pytest.approx(first["good_000.jpg"], rel=1e-5)


def test_save_maps_writes_one_valid_figure_per_test_image(saved_maps, data_root):
    """test.py --save_maps: one <defect>_<stem>.png per bottle test image (83), all decodable."""
    test_root = data_root / "bottle" / "test"
    expected = sorted(f"{d.name}_{p.stem}.png" for d in test_root.iterdir() if d.is_dir() for p in d.iterdir()
                      if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
    written = sorted(p.name for p in saved_maps.iterdir())
    assert len(written) == 83 and written == expected
    for name in written:
        assert_valid_png(saved_maps / name)


# ---- issue 23: the threshold is recorded, warned about and re-derivable; one run's outputs only ----

def test_every_output_records_the_threshold_and_how_it_was_set(fitted):
    recorded = json.loads((fitted["out"] / "threshold.json").read_text())
    info = saved_info(fitted["model"])
    assert recorded["threshold"] == info["threshold"] and recorded["interval"] == info["interval"]
    assert recorded["method"].startswith("0.95 quantile of 88 leave-one-out scores (4 support images x 22")
    assert recorded["command"].startswith("python ") and recorded["warnings"] == []
    page = (fitted["out"] / "index.html").read_text()
    assert f"Threshold {info['threshold']:.3f}: 0.95 quantile of 88" in page
    assert f"threshold {info['threshold']:.3f}: 0.95 quantile" in fitted["result"].stdout


def test_with_few_supports_predict_warns_and_records_it(support, images, tmp_path):
    result = run_ok("predict.py", "--support", *support[:3], "--images", images / "good_000.jpg", "--out",
                    tmp_path / "out", *FAST)
    assert "warning: the threshold rests on 3 support images (fewer than 4)" in result.stderr
    recorded = json.loads((tmp_path / "out" / "threshold.json").read_text())
    assert recorded["n_images"] == 3 and recorded["warnings"][0].startswith("warning: the threshold rests on 3")
    assert "scored 1 image (" in result.stdout
    assert recorded["warnings"][0] in html.unescape((tmp_path / "out" / "index.html").read_text())


def test_a_saved_fit_takes_fpr_and_refuses_options_it_cannot_apply(fitted, images, tmp_path):
    info = saved_info(fitted["model"])
    result = run_ok("predict.py", "--model", fitted["model"], "--images", images / "good_000.jpg", "--fpr", "0.2",
                    "--out", tmp_path / "out", "--device", "cpu")
    recorded = json.loads((tmp_path / "out" / "threshold.json").read_text())
    assert recorded["fpr"] == 0.2
    assert recorded["threshold"] == pytest.approx(float(np.quantile(info["loo_scores"], 0.8)), rel=1e-9)
    assert recorded["threshold"] < info["threshold"]
    for option in (["--backbone", "resnet18"], ["--img_size", "128"], ["--checkpoint", "x.pt"],
                   ["--backbone_weights", "w.pth"], ["--stn_mode", "affine"]):
        result = run_cli("predict.py", "--model", fitted["model"], "--images", images, "--out", tmp_path / "o2",
                         *option)
        assert_one_line_error(result, f"{option[0]} cannot apply to a saved fit")
    result = run_cli("predict.py", "--model", fitted["model"], "--images", images, "--out", tmp_path / "o2",
                     "--fpr", "0.1", "--threshold", "3")
    assert_one_line_error(result, "pass one")
    assert not (tmp_path / "o2").exists()


def test_a_second_run_into_the_same_out_leaves_only_its_own_outputs(fitted, images, tmp_path):
    out = tmp_path / "out"
    run_ok("predict.py", "--model", fitted["model"], "--images", images, "--out", out, "--device", "cpu")
    assert len(list((out / "figures").iterdir())) == 8
    run_ok("predict.py", "--model", fitted["model"], "--images", images / "good_000.jpg", "--out", out,
           "--device", "cpu")
    assert [p.name for p in (out / "figures").iterdir()] == ["0000_good_000.png"]
    assert len(read_scores(out)[1]) == 1
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("a user's file")
    result = run_cli("predict.py", "--model", fitted["model"], "--images", images, "--out", tmp_path / "mine")
    assert_one_line_error(result, "holds other files (notes.txt")


def test_images_in_sub_folders_need_recursive_and_it_is_named(fitted, images, tmp_path):
    nested = tmp_path / "lots" / "line1"
    nested.mkdir(parents=True)
    shutil.copy(images / "good_000.jpg", nested / "a.jpg")
    result = run_cli("predict.py", "--model", fitted["model"], "--images", tmp_path / "lots", "--out",
                     tmp_path / "out")
    assert_one_line_error(result, "no image file found in --images", "pass --recursive")
    assert not (tmp_path / "out").exists()  # a failed run leaves no empty folder
    run_ok("predict.py", "--model", fitted["model"], "--images", tmp_path / "lots", "--recursive", "--out",
           tmp_path / "out", "--device", "cpu")
    assert [Path(r["file"]).name for r in read_scores(tmp_path / "out")[1]] == ["a.jpg"]
