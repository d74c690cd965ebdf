"""Reader for the MVTec AD folder layout, shared by MVTec AD, MPDD, converted VisA and a user's own data:

    CAT/train/good/*.png|jpg...             normal training images (what makes CAT a category)
    CAT/test/good/*, CAT/test/<defect>/*    test images; 'good' is normal, any other folder anomalous
    CAT/ground_truth/<defect>/<stem>_mask.png   optional pixel masks of the anomalous test images

Categories are discovered, not listed, so new datasets need no code change. Images are returned as
uint8 RGB tensors (16-bit files scaled to 8 bits); normalisation belongs to the backbone and happens inside
the model. Masks are binary: nonzero = defect.
"""
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

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


def folders_without_training_images(data_path):
    """Sub-folders laid out as a category (with train/ or test/) but without images in train/good: not
    categories, yet worth naming, since they were surely meant as ones."""
    return [p for p in sorted(Path(data_path).iterdir()) if p.is_dir() and not image_files(p / "train" / "good")
            and ((p / "train").is_dir() or (p / "test").is_dir())]


def discover_categories(data_path):
    """All categories under data_path, by name."""
    data_path = Path(data_path)
    if data_path.is_file():
        raise UserError(f"data path '{data_path}' is a file, not a folder; pass --data_path pointing to {LAYOUT}")
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
    if name not in categories and (Path(data_path) / name).is_dir():
        raise UserError(f"category '{name}' has no images in {Path(data_path) / name / 'train' / 'good'}; "
                        "put its normal training images there")
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


def decode(path, read):
    """read(opened PIL image), with any decoding failure as one line naming the file."""
    try:
        with Image.open(path) as img:
            return read(img)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise UserError(f"cannot read image '{path}' ({type(exc).__name__}); replace or delete the file")


def to_8bit(img, path):
    """Pillow keeps single-channel 16-bit images (PNG/TIFF mode I;16) at 16 bits and its convert() clips them
    at 255, so a 16-bit photo would be all white: scale them by their bit depth (value >> 8) instead. Pillow
    already reduces multi-channel 16-bit images to 8 bits; 32-bit ones (I, F) have no known range."""
    if img.mode.startswith("I;16"):
        return Image.fromarray((np.asarray(img) >> 8).astype(np.uint8))
    if img.mode in ("I", "F"):
        raise UserError(f"image '{path}' has 32-bit pixels (mode {img.mode}) of unknown range; "
                        "save it as an 8- or 16-bit image")
    return img


def upright(img):
    """The image as a viewer shows it: an EXIF orientation (phone and camera photos) applied, as PIL's
    exif_transpose, so a photo taken sideways is not scored sideways."""
    return ImageOps.exif_transpose(img)


def load_image(path, size):
    """uint8 [3, size, size]; greyscale, palette, RGBA and 16-bit images become 8-bit RGB; upright (EXIF). A
    non-square image is stretched to the square, not cropped (as the official code). Lanczos as the official
    code."""
    array = decode(path, lambda img: np.asarray(to_8bit(upright(img), path).convert("RGB").resize(
        (size, size), Image.LANCZOS)))
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def mask_values(img):
    """The stored values of a single-channel mask (0/1 masks stay 0/1); colour masks as greyscale."""
    return np.asarray(img if len(img.getbands()) == 1 and img.mode != "P" else img.convert("L"))


ORIENTATION, TURNED = 0x0112, (5, 6, 7, 8)  # the EXIF tag, and its values that swap width and height


def load_mask(item, size):
    """bool [size, size] mask of a TestItem: nonzero = defect, so 0/1 and 0/255 masks both work. A mask with
    several nonzero values (JPEG-compressed, anti-aliased) or of another size than its image would give wrong
    pixel metrics, so it is refused. The image's size is read from its header, without decoding it."""
    image_size = decode(item.path, lambda img: img.size[::-1] if img.getexif().get(ORIENTATION, 1) in TURNED
                        else img.size)
    mask_size, values = decode(item.mask_path, lambda img: (upright(img).size, mask_values(upright(img))))
    if mask_size != image_size:
        raise UserError(f"mask '{item.mask_path}' is {mask_size[0]}x{mask_size[1]} but its image '{item.path}' is "
                        f"{image_size[0]}x{image_size[1]}; a mask must have its image's size")
    defect = values != 0
    if defect.any() and (values[defect] != values[defect].flat[0]).any():
        raise UserError(f"mask '{item.mask_path}' is not binary ({len(np.unique(values))} different values); save it "
                        "with 0 for normal pixels and one value (1 or 255) for defect pixels, as PNG")
    resized = Image.fromarray(defect.astype(np.uint8)).resize((size, size), Image.NEAREST)
    return torch.from_numpy(np.asarray(resized) > 0)


def load_images(paths, size):
    """uint8 [N, 3, size, size], decoded once so training and testing can keep them in memory."""
    images = torch.empty((len(paths), 3, size, size), dtype=torch.uint8)
    for i, path in enumerate(paths):
        images[i] = load_image(path, size)
    return images
