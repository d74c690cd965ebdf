"""Per-image figures (input | anomaly map | overlay, with the ground-truth outline where a mask
exists), shared by test.py --save_maps and predict.py."""
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the file-only backend)
from matplotlib.ticker import MaxNLocator  # noqa: E402

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


def save_learning_curves(path, panels):
    """learning_curves(panels) written to path; nothing is written without panels."""
    if not panels:
        return None
    save_plot(learning_curves(panels), path)
    return path


def learning_curves(panels):
    """A grid, one panel per trained (target, K): test image and pixel AUROC of every evaluated epoch (solid), the
    registration-free level (dashed) and the paper's number (dotted) in the same colours, the training loss on
    the right axis (grey), the epoch the paper protocol chose on the test set (vertical). panels: dicts with title,
    epochs, auroc {metric: [%]}, loss ([epochs], [losses]), free {metric: %}, paper {metric: % or None} and
    optionally chosen (an epoch or None)."""
    columns = min(len(panels), 4)
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3.2 * rows), squeeze=False)
    colours = {"image_auroc": "tab:blue", "pixel_auroc": "tab:orange"}
    for ax, panel in zip(axes.flat, panels):
        for metric, colour in colours.items():
            if all(v != v for v in panel["auroc"][metric]):  # all NaN: no masks, no pixel curve or references
                continue
            label = metric.replace("_auroc", "")
            ax.plot(panel["epochs"], panel["auroc"][metric], "o-", ms=3, color=colour, label=f"{label} AUROC")
            if panel["free"].get(metric) is not None:
                ax.axhline(panel["free"][metric], color=colour, ls="--", lw=1, label=f"{label}, registration-free")
            if panel["paper"].get(metric) is not None:
                ax.axhline(panel["paper"][metric], color=colour, ls=":", lw=1.5, label=f"{label}, paper")
        if panel.get("chosen") is not None:
            ax.axvline(panel["chosen"], color="black", ls="-.", lw=0.8, label="paper protocol's choice")
        loss = ax.twinx()
        loss.plot(*panel["loss"], ".-", ms=4, color="grey", lw=1)  # the marker shows a single epoch's loss too
        loss.tick_params(axis="y", colors="grey", labelsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole
        ax.set_title(panel["title"], fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.set_ylabel("test AUROC (%)", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    legend = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    legend["training loss (right axis)"] = plt.Line2D([], [], color="grey", marker=".", ms=4)
    ncol = 2 if columns == 1 else 4
    fig.legend(list(legend.values()), list(legend), loc="lower center", ncol=ncol, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.2 * (-(-len(legend) // ncol) + 0.5) / (3.2 * rows), 1, 1))  # 0.2 inch a line
    return fig
