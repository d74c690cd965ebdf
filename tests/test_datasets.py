"""Data tests on the real mvtec-mini pack: discovery, test-set pairing, decoding, user errors,
the training pair sampler and the fixed support sets."""
import json
import math
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import copy_category, files_under
from datasets.mvtec import (discover_categories, get_category, list_test_set, load_image, load_images,
                            load_mask)
from datasets.sampler import PairSampler, training_pools
from datasets.support_set import (default_support_path, generate_support_sets, load_support_sets, main,
                                  save_support_sets, support_sets_for)
from utils.cli import run_main
from utils.errors import UserError
from utils.io import atomic_write_text

REPO = Path(__file__).resolve().parents[1]
TARGETS = ["bottle", "leather", "metal_plate", "pill", "screw", "transistor"]


@pytest.fixture(scope="module")
def categories(data_root):
    return discover_categories(data_root)


def small_copy(src, dst, test_folder, test_name):
    """A one-category layout in dst: one real training image and one real test image."""
    (dst / "train" / "good").mkdir(parents=True)
    shutil.copy(src.train_images[0], dst / "train" / "good" / "000.jpg")
    (dst / "test" / test_folder).mkdir(parents=True)
    shutil.copy(src.train_images[1], dst / "test" / test_folder / test_name)
    return dst


# ---- discovery and the test set ----

def test_discovery_finds_the_seven_categories(categories):
    assert list(categories) == ["bottle", "cashew", "leather", "metal_plate", "pill", "screw", "transistor"]
    assert [n for n, c in categories.items() if c.has_test] == TARGETS
    assert [n for n, c in categories.items() if c.has_masks] == ["bottle", "leather", "metal_plate", "pill", "screw"]
    assert {n: len(c.train_images) for n, c in categories.items()} == {
        "bottle": 209, "cashew": 282, "leather": 4, "metal_plate": 54, "pill": 267, "screw": 320, "transistor": 213}
    assert categories["bottle"].train_images == sorted(categories["bottle"].train_images)


def test_bottle_test_set_labels_and_masks(categories):
    items = list_test_set(categories["bottle"])
    assert Counter(i.label for i in items) == {1: 63, 0: 20}
    assert Counter(i.defect_type for i in items if i.label) == {"broken_large": 20, "broken_small": 22,
                                                               "contamination": 21}
    for item in items:
        if item.label:
            assert item.mask_path.is_file()
            assert item.mask_path.parent.name == item.defect_type
            assert item.mask_path.name == f"{item.path.stem}_mask.png"
        else:
            assert item.defect_type == "good" and item.mask_path is None


def test_transistor_has_labels_but_no_masks(categories):
    items = list_test_set(categories["transistor"])
    assert Counter(i.label for i in items) == {1: 40, 0: 60}
    assert all(i.mask_path is None for i in items)


def test_images_are_uint8_rgb_and_masks_binary(categories):
    rgb = load_image(categories["bottle"].train_images[0], 64)
    grey = load_image(categories["screw"].train_images[0], 64)  # stored as single-channel JPEG
    for image in (rgb, grey):
        assert image.dtype == torch.uint8 and image.shape == (3, 64, 64)
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[0], grey[2])
    assert load_images(categories["bottle"].train_images[:3], 32).shape == (3, 3, 32, 32)

    defective = next(i for i in list_test_set(categories["bottle"]) if i.label)
    mask = load_mask(defective, 224)
    assert mask.dtype == torch.bool and mask.shape == (224, 224)
    assert 0 < mask.sum() < mask.numel()


def test_16bit_png_decodes_like_the_8bit_one(categories, tmp_path):
    """Pillow keeps 16-bit greyscale PNGs at 16 bits and its convert('RGB') clips them to white."""
    grey = np.asarray(Image.open(categories["bottle"].train_images[0]).convert("L"))
    Image.fromarray(grey).save(tmp_path / "8bit.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "16bit.png")  # 0..255 -> 0..65535
    assert Image.open(tmp_path / "16bit.png").mode == "I;16"
    eight, sixteen = load_image(tmp_path / "8bit.png", 64), load_image(tmp_path / "16bit.png", 64)
    assert (eight.int() - sixteen.int()).abs().max() <= 1
    assert sixteen.float().mean() < 200  # not the all-white image of convert('RGB')


def test_32bit_image_of_unknown_range_is_refused(tmp_path):
    Image.fromarray(np.full((32, 32), 70000, dtype=np.int32)).save(tmp_path / "deep.tif")
    with pytest.raises(UserError, match="'.*deep.tif' has 32-bit pixels \\(mode I\\).*save it as an 8- or 16-bit"):
        load_image(tmp_path / "deep.tif", 32)


@pytest.fixture
def leather(data_root, tmp_path):
    """A copy of leather (4 train, 15 test images, 11 masks) to damage."""
    return copy_category(data_root, "leather", tmp_path / "data")


def first_defect(category_root):
    return next(i for i in list_test_set(discover_categories(category_root.parent)["leather"]) if i.label)


def test_masks_stored_as_0_1_read_as_0_255(leather):
    from scoring.evaluation import load_test_data
    category = discover_categories(leather.parent)["leather"]
    reference = load_test_data(category, 64).masks
    for mask in (leather / "ground_truth").rglob("*.png"):
        Image.fromarray((np.asarray(Image.open(mask)) > 0).astype(np.uint8)).save(mask)  # values 0 and 1
    assert reference.any() and np.array_equal(load_test_data(category, 64).masks, reference)


def test_non_binary_mask_is_refused_naming_the_file(leather):
    item = first_defect(leather)
    values = np.asarray(Image.open(item.mask_path)).copy()
    values[values > 0] = np.linspace(1, 255, int((values > 0).sum())).astype(np.uint8)  # e.g. a JPEG'd mask
    Image.fromarray(values).save(item.mask_path)
    with pytest.raises(UserError, match=re.escape(f"mask '{item.mask_path}' is not binary")):
        load_mask(item, 64)


def test_mask_of_another_size_than_its_image_is_refused(leather):
    item = first_defect(leather)
    Image.open(item.mask_path).resize((100, 120)).save(item.mask_path)
    with pytest.raises(UserError, match=re.escape(f"mask '{item.mask_path}' is 100x120 but its image '{item.path}' "
                                                  "is 224x224")):
        load_mask(item, 64)


def test_test_set_without_defective_images_fails_before_any_compute(leather):
    from scoring.evaluation import load_test_data
    for folder in (leather / "test").iterdir():
        if folder.name != "good":
            shutil.rmtree(folder)
    with pytest.raises(UserError, match="the test set of leather has only normal images; AUROC needs both"):
        load_test_data(discover_categories(leather.parent)["leather"], 64)


def test_all_masks_empty_fails_before_any_compute(leather):
    from scoring.evaluation import load_test_data
    for mask in (leather / "ground_truth").rglob("*.png"):
        Image.fromarray(np.zeros((224, 224), np.uint8)).save(mask)
    with pytest.raises(UserError, match="every mask in .*ground_truth is empty"):
        load_test_data(discover_categories(leather.parent)["leather"], 64)


# ---- user errors ----

def test_missing_data_folder(tmp_path):
    with pytest.raises(UserError, match="does not exist; pass --data_path"):
        discover_categories(tmp_path / "nowhere")


def test_folder_without_categories(tmp_path):
    (tmp_path / "bottle" / "train").mkdir(parents=True)
    with pytest.raises(UserError, match="no category found.*CAT/train/good"):
        discover_categories(tmp_path)


def test_unknown_category_lists_those_found(data_root):
    with pytest.raises(UserError, match="unknown category 'bottel'.*found: bottle, cashew, leather"):
        get_category(data_root, "bottel")


@pytest.mark.parametrize("train_good", ["missing", "empty"])
def test_category_without_training_images_is_named_as_such(data_root, leather, train_good):
    copy_category(data_root, "cashew", leather.parent, train=3)
    shutil.rmtree(leather / "train" / "good")
    if train_good == "empty":
        (leather / "train" / "good").mkdir()
    with pytest.raises(UserError, match=re.escape(f"category 'leather' has no images in {leather}/train/good")):
        get_category(leather.parent, "leather")


def test_training_only_category_is_not_a_target(data_root):
    assert not get_category(data_root, "cashew").has_test
    with pytest.raises(UserError, match="'cashew' is training-only.*bottle, leather, metal_plate"):
        get_category(data_root, "cashew", need_test=True)


def test_shot_larger_than_the_normal_pool(categories):
    names = [p.name for p in categories["leather"].train_images]
    with pytest.raises(UserError, match="K=8 is larger than the 4 normal training images of leather; "
                                        "use --shot 4 or fewer"):
        generate_support_sets(names, 8, 10, 668, "leather")


def test_corrupt_image_names_the_file(categories, tmp_path):
    root = small_copy(categories["bottle"], tmp_path / "mine", "good", "000.jpg")
    bad = root / "test" / "good" / "001.png"
    bad.write_bytes(b"not an image at all")
    category = discover_categories(tmp_path)["mine"]
    items = list_test_set(category)
    assert [i.path.name for i in items] == ["000.jpg", "001.png"]
    with pytest.raises(UserError, match=re.escape(f"cannot read image '{bad}'")):
        load_images([i.path for i in items], 32)


def test_missing_mask_names_the_file(categories, tmp_path):
    root = small_copy(categories["bottle"], tmp_path / "mine", "crack", "007.jpg")
    (root / "ground_truth" / "crack").mkdir(parents=True)
    with pytest.raises(UserError, match="ground_truth/crack/007_mask.png' of test image .* is missing"):
        list_test_set(discover_categories(tmp_path)["mine"])


# ---- training pair sampler ----

def test_sampler_pairs(categories):
    pools = training_pools(categories, "bottle")
    sampler = PairSampler(pools, shot=8, batch_size=32, seed=668)
    assert sampler.skipped == [] and "leather" in sampler.pools  # 4 images train at K=8, as in the official code
    batches = sampler.batches(epoch=0)
    queries = {name: [] for name in sampler.pools}
    for batch in batches:
        assert batch.category != "bottle" and batch.category in sampler.pools
        assert 1 <= len(batch.query_indices) <= 32 and len(batch.support_indices) == len(batch.query_indices)
        for query, supports in zip(batch.query_indices, batch.support_indices):
            assert len(supports) == 8 and query not in supports
            assert all(0 <= s < pools[batch.category] for s in supports)
        queries[batch.category] += batch.query_indices
    assert {name: sorted(q) for name, q in queries.items()} == {name: list(range(pools[name]))
                                                                for name in sampler.pools}
    assert len(batches) == sum(-(-pools[name] // 32) for name in sampler.pools)
    assert [b.category for b in batches] != sorted(b.category for b in batches)  # categories interleaved


def test_sampler_draws_each_support_independently_as_the_official_code():
    """The official FSAD_Dataset_train: each support uniform over the query's n - 1 other images, drawn
    independently (repeats allowed). With 3 images at K=2 a query repeats its support with probability 1/2;
    with metal_plate's 54 at K=8, 1 - prod (53 - i) / 53 = 0.423; every other image is equally likely."""
    def draws(n, shot, epochs):
        sampler = PairSampler({"pool": n}, shot=shot, batch_size=32, seed=668)
        return [(q, s) for e in range(epochs) for b in sampler.batches(e)
                for q, s in zip(b.query_indices, b.support_indices)]

    tiny = draws(3, 2, 2000)  # 6000 queries
    repeats = sum(len(set(s)) < 2 for _, s in tiny) / len(tiny)
    assert abs(repeats - 0.5) < 4 * (0.25 / len(tiny)) ** 0.5
    assert all(q not in s for q, s in tiny)
    others = [j - (j > q) for q, s in tiny for j in s]  # the rank of each support among the query's others
    assert all(abs(others.count(r) / len(others) - 0.5) < 4 * (0.25 / len(others)) ** 0.5 for r in (0, 1))

    plates = draws(54, 8, 100)  # 5400 queries
    expected = 1 - math.prod((53 - i) / 53 for i in range(8))
    repeats = sum(len(set(s)) < 8 for _, s in plates) / len(plates)
    assert abs(repeats - expected) < 4 * (expected * (1 - expected) / len(plates)) ** 0.5
    assert all(q not in s for q, s in plates)


def test_sampler_trains_a_two_image_category_at_any_k():
    sampler = PairSampler({"two": 2, "one": 1}, shot=8, batch_size=32, seed=0)
    assert sampler.skipped == ["one"] and list(sampler.pools) == ["two"]
    (batch,) = sampler.batches(epoch=1)
    assert sorted(batch.query_indices) == [0, 1]
    assert all(s == [1 - q] * 8 for q, s in zip(batch.query_indices, batch.support_indices))


def test_sampler_is_reproducible(categories):
    pools = training_pools(categories, "screw")
    first = PairSampler(pools, shot=2, batch_size=8, seed=1).batches(epoch=3)
    assert PairSampler(pools, shot=2, batch_size=8, seed=1).batches(epoch=3) == first
    assert PairSampler(pools, shot=2, batch_size=8, seed=2).batches(epoch=3) != first
    assert PairSampler(pools, shot=2, batch_size=8, seed=1).batches(epoch=4) != first


def test_sampler_refuses_when_no_category_has_two_images():
    with pytest.raises(UserError, match="no training category has 2 normal images"):
        PairSampler({"one": 1}, shot=1, batch_size=32, seed=0)


# ---- fixed support sets ----

def test_support_sets_are_deterministic(categories):
    names = [p.name for p in categories["bottle"].train_images]
    sets = generate_support_sets(names, 4, 10, 668, "bottle")
    assert sets == generate_support_sets(list(reversed(names)), 4, 10, 668, "bottle")
    assert sets != generate_support_sets(names, 4, 10, 669, "bottle")
    assert all(len(s) == 4 and len(set(s)) == 4 and s == sorted(s) and set(s) <= set(names) for s in sets)


def test_support_set_json_round_trip(categories, tmp_path):
    bottle = categories["bottle"]
    sets = generate_support_sets([p.name for p in bottle.train_images], 2, 3, 7, "bottle")
    path = default_support_path(tmp_path, "mvtec-mini", "bottle", 2, 3)
    save_support_sets(path, "mvtec-mini", "bottle", 2, 7, sets)
    assert json.loads(path.read_text()) == {"dataset": "mvtec-mini", "category": "bottle", "shot": 2,
                                            "rounds": 3, "seed": 7, "sets": sets}
    rounds = load_support_sets(path, bottle, 32, shot=2)
    by_name = {p.name: p for p in bottle.train_images}
    for images, names in zip(rounds, sets, strict=True):
        assert torch.equal(images, load_images([by_name[n] for n in names], 32))

    with pytest.raises(UserError, match="holds 2-shot support sets but K=4 was asked"):
        load_support_sets(path, bottle, 32, shot=4)
    with pytest.raises(UserError, match="holds support sets of bottle, not screw"):
        load_support_sets(path, categories["screw"], 32)
    path.write_text(path.read_text().replace(sets[1][0], "999.jpg"))
    with pytest.raises(UserError, match="'999.jpg' listed in .* regenerate"):
        load_support_sets(path, bottle, 32)
    with pytest.raises(UserError, match="does not exist; create it with python -m datasets.support_set"):
        load_support_sets(tmp_path / "8_10.json", bottle, 32)


def test_committed_support_sets(categories):
    for name in TARGETS:
        for shot in (2, 4, 8):
            path = default_support_path(REPO, "mvtec-mini", name, shot, 10)
            assert path.is_file() == (shot <= len(categories[name].train_images)), path
    for path in sorted((REPO / "support_set" / "mvtec-mini").glob("*/*.json")):
        doc = json.loads(path.read_text())
        assert (doc["dataset"], doc["category"], f"{doc['shot']}_{doc['rounds']}.json") == \
            ("mvtec-mini", path.parent.name, path.name)
        rounds = load_support_sets(path, categories[doc["category"]], 32, shot=doc["shot"])
        assert len(rounds) == 10 and all(r.shape == (doc["shot"], 3, 32, 32) for r in rounds)


def test_cli_regenerates_the_committed_files(data_root, tmp_path, capsys):
    main(["--data_path", str(data_root), "--dataset", "mvtec-mini", "--shots", "2", "8", "--out", str(tmp_path),
          "--categories", "leather", "metal_plate"])
    assert "skipping leather K=8" in capsys.readouterr().out
    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.json"))
    assert [str(p) for p in written] == ["mvtec-mini/leather/2_10.json", "mvtec-mini/metal_plate/2_10.json",
                                         "mvtec-mini/metal_plate/8_10.json"]
    for path in written:
        assert (tmp_path / path).read_text() == (REPO / "support_set" / path).read_text()


def support_cli(capsys, *args):
    """python -m datasets.support_set ARGS in this process: (exit code, stdout, stderr)."""
    code = 0
    try:
        run_main(lambda: main([str(a) for a in args]))
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def test_support_set_cli_never_replaces_other_sets_silently(data_root, tmp_path, capsys):
    committed = {p: p.read_bytes() for p in (REPO / "support_set").rglob("*.json")}
    code, _, err = support_cli(capsys, "--data_path", data_root, "--dataset", "mvtec-mini", "--categories", "leather",
                               "--shots", "2", "--seed", "1")  # default --out: the committed files
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: ")
    assert "mvtec-mini/leather/2_10.json' exists and holds other support sets" in err and "--overwrite" in err
    assert {p: p.read_bytes() for p in (REPO / "support_set").rglob("*.json")} == committed

    code, out, _ = support_cli(capsys, "--data_path", data_root, "--dataset", "mvtec-mini", "--categories", "leather",
                               "--shots", "2")  # the committed seed: same sets
    assert code == 0 and out.startswith("unchanged ") and "leather/2_10.json" in out

    args = ["--data_path", data_root, "--categories", "leather", "--shots", "2", "--out", tmp_path]
    assert support_cli(capsys, *args)[0] == 0
    written = next(tmp_path.rglob("*.json"))
    first = written.read_text()
    assert support_cli(capsys, *args, "--seed", "1")[0] == 2 and written.read_text() == first
    code, out, _ = support_cli(capsys, *args, "--seed", "1", "--overwrite")
    assert code == 0 and out.startswith("replaced ") and written.read_text() != first


def test_support_set_cli_names_categories_without_training_images(data_root, leather, capsys):
    copy_category(data_root, "cashew", leather.parent, train=3)  # training-only
    shutil.rmtree(leather / "train" / "good")
    out = leather.parent.parent / "sets"
    code, stdout, err = support_cli(capsys, "--data_path", leather.parent, "--out", out)
    assert f"skipping leather: no images in {leather}/train/good" in stdout
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: nothing to write")
    code, _, err = support_cli(capsys, "--data_path", leather.parent, "--categories", "leather", "--out", out)
    assert code == 2 and f"category 'leather' has no images in {leather}/train/good" in err
    assert files_under(out) == []


def test_support_set_cli_names_a_corrupt_training_image_before_writing(leather, capsys):
    bad = sorted((leather / "train" / "good").iterdir())[1]
    bad.write_bytes(bad.read_bytes()[:200])  # truncated
    out = leather.parent.parent / "sets"
    code, _, err = support_cli(capsys, "--data_path", leather.parent, "--shots", "2", "4", "--out", out)
    assert code == 2 and err.count("\n") == 1 and f"cannot read image '{bad}'" in err
    assert files_under(out) == []


def test_support_sets_for_a_run(categories, tmp_path):
    leather = categories["leather"]
    committed = load_support_sets(default_support_path(REPO, "mvtec-mini", "leather", 2, 10), leather, 32)
    assert all(map(torch.equal, support_sets_for(leather, 2, 10, 668, "mvtec-mini", 32, root=REPO), committed))
    # no committed file (e.g. a user's dataset): the same sets are generated from the seed
    generated = support_sets_for(leather, 2, 10, 668, "mine", 32, root=tmp_path)
    assert all(map(torch.equal, generated, committed))
    assert not all(map(torch.equal, support_sets_for(leather, 2, 10, 1, "mvtec-mini", 32, root=REPO), committed))
    with pytest.raises(UserError, match="holds 10 support sets but --rounds is 5; pass --rounds 10"):
        support_sets_for(leather, 2, 5, 668, None, 32,
                         explicit=default_support_path(REPO, "mvtec-mini", "leather", 2, 10))


def test_official_pt_support_sets(categories, tmp_path):
    images = torch.rand(3, 2, 3, 48, 48)  # [rounds, K, 3, H, W] float in [0, 1], like <K>_10.pt
    torch.save(images, tmp_path / "2_3.pt")
    rounds = load_support_sets(tmp_path / "2_3.pt", categories["bottle"], 48, shot=2)
    assert len(rounds) == 3 and all(r.dtype == torch.uint8 and r.shape == (2, 3, 48, 48) for r in rounds)
    assert (rounds[1].float() / 255 - images[1]).abs().max() <= 0.5 / 255 + 1e-6

    torch.save(list(images), tmp_path / "list.pt")  # a list of [K, 3, H, W] tensors also works, and is resized
    assert all(r.shape == (2, 3, 32, 32) for r in load_support_sets(tmp_path / "list.pt", categories["bottle"], 32))

    torch.save((images - 0.45) / 0.225, tmp_path / "normalised.pt")
    with pytest.raises(UserError, match="outside \\[0, 1\\]"):
        load_support_sets(tmp_path / "normalised.pt", categories["bottle"], 48)


# ---- entry-point plumbing ----

def test_user_error_is_one_line_and_exit_code_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda: main(["--data_path", str(tmp_path / "nowhere")]))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: data folder") and err.count("\n") == 1


def test_atomic_write_creates_folders_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "a" / "b" / "out.json"
    atomic_write_text(path, "one")
    atomic_write_text(path, "two")
    assert path.read_text() == "two" and [p.name for p in path.parent.iterdir()] == ["out.json"]


def test_an_exif_orientation_is_applied_and_a_non_square_image_is_stretched(tmp_path):
    """A sideways photo (EXIF orientation 6: turn 90 degrees clockwise to view) loads as the viewer shows it,
    like the same picture stored upright; a 60 x 40 image is stretched to the square, not cropped."""
    from datasets.mvtec import load_image
    pixels = np.zeros((40, 60, 3), np.uint8)
    pixels[:10, :20] = (255, 0, 0)  # a red block top-left, to see the orientation
    pixels[:, 30:] = (0, 0, 255)
    stored = Image.fromarray(pixels)
    exif = stored.getexif()
    exif[0x0112] = 6
    stored.save(tmp_path / "sideways.png", exif=exif)
    stored.transpose(Image.Transpose.ROTATE_270).save(tmp_path / "upright.png")
    sideways = load_image(tmp_path / "sideways.png", 32)
    assert torch.equal(sideways, load_image(tmp_path / "upright.png", 32))
    stored.save(tmp_path / "plain.png")
    squeezed = np.asarray(stored.resize((32, 32), Image.LANCZOS))  # the whole image, no crop
    assert torch.equal(load_image(tmp_path / "plain.png", 32), torch.from_numpy(squeezed.copy()).permute(2, 0, 1))
    assert not torch.equal(sideways, load_image(tmp_path / "plain.png", 32))
