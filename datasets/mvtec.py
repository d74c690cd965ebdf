"""Reader for the MVTec AD folder layout, shared by MVTec AD, MPDD, converted VisA and a user's own data:

    CAT/train/good/*.png|jpg...             normal training images (what makes CAT a category)
    CAT/test/good/*, CAT/test/<defect>/*    test images; 'good' is normal, any other folder anomalous
    CAT/ground_truth/<defect>/<stem>_mask.png   optional pixel masks of the anomalous test images

Categories are discovered, not listed, so new datasets need no code change. Images are returned as
uint8 RGB tensors; normalisation belongs to the backbone and happens inside the model.
"""
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from utils.errors import UserError

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
LAYOUT = "an MVTec-layout folder (CAT/train/good, CAT/test/<defect>)"


@dataclass(frozen=True)
class Category:
    name: str
    root: Path
    train_images: list  # sorted paths of CAT/train/good
    has_test: bool  # CAT/test holds images, so CAT can be a few-shot target
    has_masks: bool  # CAT/ground_truth exists, so pixel-level metrics are possible


@dataclass(frozen=True)
class TestItem:
    __test__ = False  # a data record, not a pytest test class

    path: Path
    label: int  # 0 normal, 1 anomalous
    defect_type: str
    mask_path: Path | None  # None for normal images and for categories without masks


def image_files(folder):
    """Sorted image files of a folder; hidden files (e.g. macOS '._x.png' resource forks) are not images."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file())


def defect_folders(root):
    """Sorted sub-folders of CAT/test (one per defect type, plus 'good')."""
    test = root / "test"
    return sorted(p for p in test.iterdir() if p.is_dir()) if test.is_dir() else []


def read_category(root):
    train = image_files(root / "train" / "good")
    if not train:
        return None
    has_test = any(image_files(folder) for folder in defect_folders(root))
    return Category(root.name, root, train, has_test, (root / "ground_truth").is_dir())


def discover_categories(data_path):
    """All categories under data_path, by name."""
    data_path = Path(data_path)
    if not data_path.is_dir():
        raise UserError(f"data folder '{data_path}' does not exist; pass --data_path pointing to {LAYOUT}")
    found = (read_category(p) for p in sorted(data_path.iterdir()) if p.is_dir())
    categories = {c.name: c for c in found if c is not None}
    if categories:
        return categories
    if image_files(data_path / "train" / "good"):
        raise UserError(f"'{data_path}' is a single category; pass its parent folder as --data_path")
    raise UserError(f"no category found in '{data_path}'; expected {LAYOUT} with images in CAT/train/good")


def get_category(data_path, name, need_test=False):
    categories = discover_categories(data_path)
    if name not in categories:
        raise UserError(f"unknown category '{name}' in '{data_path}'; found: {', '.join(categories)}")
    category = categories[name]
    if need_test and not category.has_test:
        targets = [c.name for c in categories.values() if c.has_test]
        raise UserError(f"category '{name}' is training-only (no test images in {category.root / 'test'}); "
                        f"choose a target with a test split: {', '.join(targets) or 'none found'}")
    return category


def list_test_set(category):
    """Every test image with its label, defect type and mask, in folder order."""
    if not category.has_test:
        raise UserError(f"category '{category.name}' has no test images in {category.root / 'test'}; "
                        "choose a category with a test split")
    items = []
    for folder in defect_folders(category.root):
        label = int(folder.name != "good")
        for path in image_files(folder):
            mask = None
            if label and category.has_masks:
                mask = category.root / "ground_truth" / folder.name / f"{path.stem}_mask.png"
                if not mask.is_file():
                    raise UserError(f"mask '{mask}' of test image '{path}' is missing; add it, or remove "
                                    f"{category.root / 'ground_truth'} to evaluate image-level only")
            items.append(TestItem(path, label, folder.name, mask))
    return items


def open_image(path, mode, size, resample):
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert(mode).resize((size, size), resample))
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise UserError(f"cannot read image '{path}' ({type(exc).__name__}); replace or delete the file")


def load_image(path, size):
    """uint8 [3, size, size]; greyscale, palette and RGBA images become RGB. Lanczos as the official code."""
    return torch.from_numpy(open_image(path, "RGB", size, Image.LANCZOS).copy()).permute(2, 0, 1).contiguous()


def load_mask(path, size):
    """bool [size, size]; nearest-neighbour resize keeps the mask binary."""
    return torch.from_numpy(open_image(path, "L", size, Image.NEAREST) > 127)


def load_images(paths, size, progress=False):
    """uint8 [N, 3, size, size], decoded once so training and testing can keep them in memory."""
    images = torch.empty((len(paths), 3, size, size), dtype=torch.uint8)
    for i, path in enumerate(tqdm(paths, desc="decoding images", disable=not progress, leave=False)):
        images[i] = load_image(path, size)
    return images
