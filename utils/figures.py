"""Per-image figures (input | anomaly map | overlay, with the ground-truth outline where a mask
exists), shared by test.py --save_maps and predict.py."""
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the file-only backend)

from utils.io import atomic_write_bytes  # noqa: E402


def save_figure(path, image, anomaly_map, title, vmax, mask=None):
    """image uint8 [3, H, W] tensor, anomaly_map [H, W] array; one colour scale (0..vmax) per run so
    figures are comparable. Written atomically."""
    picture = image.permute(1, 2, 0).numpy()
    fig, axes = plt.subplots(1, 3, figsize=(9, 3.3))
    axes[0].imshow(picture)
    axes[0].set_title("input")
    shown = axes[1].imshow(anomaly_map, cmap="jet", vmin=0, vmax=vmax)
    axes[1].set_title("anomaly map")
    fig.colorbar(shown, ax=axes[1], fraction=0.046, pad=0.04)
    axes[2].imshow(picture)
    axes[2].imshow(anomaly_map, cmap="jet", vmin=0, vmax=vmax, alpha=0.45)
    axes[2].set_title("overlay")
    if mask is not None and mask.any():
        for ax in (axes[0], axes[2]):
            ax.contour(mask, levels=[0.5], colors="white", linewidths=1.2)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_plot(fig, path, dpi=80)


def save_plot(fig, path, dpi=100):
    """Write a figure as PNG atomically and close it."""
    png = io.BytesIO()
    try:
        fig.savefig(png, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    atomic_write_bytes(path, png.getbuffer())


def save_test_figures(folder, test, maps, scores):
    """One figure per test image of a category (maps and image scores numpy), named <defect>_<file stem>.png."""
    vmax = float(maps.max())
    for index, item in enumerate(test.items):
        mask = None if test.masks is None else test.masks[index]
        title = f"{item.defect_type}/{Path(item.path).name}  score {scores[index]:.2f}"
        save_figure(Path(folder) / f"{item.defect_type}_{Path(item.path).stem}.png", test.images[index],
                    maps[index], title, vmax, mask)
