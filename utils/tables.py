"""Paper-style Markdown tables (rows: categories, columns: K) from a test.py report."""
import numpy as np

TITLES = {"image_auroc": "Image AUROC", "pixel_auroc": "Pixel AUROC", "aupro": "AUPRO (FPR <= 0.3)",
          "image_f1_max": "Image F1-max"}


def spread_name(report):
    ddof = report.get("std_ddof", 0)
    return "sample std (ddof=1)" if ddof == 1 else f"std with ddof={ddof}"


def markdown_tables(report):
    """One table per metric; cells are mean ± sample std (ddof 1; reports without std_ddof: 0) over the support
    rounds, in percent: no ± for one round or when every round used the same support images."""
    results = report["results"]
    shots = sorted({int(k) for per_cat in results.values() for k in per_cat})
    metrics = next((list(r["summary"]) for per_cat in results.values() for r in per_cat.values()), [])
    lines = [f"Backbone {report.get('backbone')}, stn_mode {report.get('stn_mode')}, "
             f"img_size {report.get('img_size')}; {report.get('protocol')}; {report['rounds']} support rounds, "
             f"seed {report['seed']}; code {report['code_version']}; ± is the {spread_name(report)} over the rounds.",
             f"Command: `{report['command']}`", ""]
    for metric in metrics:  # the evaluation's order (scoring.evaluation.METRICS)
        rows, column_means = [], {k: [] for k in shots}
        for name, per_cat in results.items():
            cells = []
            for k in shots:
                summary = per_cat.get(str(k), {}).get("summary", {}).get(metric)
                if summary is None:
                    cells.append("n/a")
                    continue
                column_means[k].append(summary["mean"])
                same = any(note.startswith("all ") for note in per_cat[str(k)].get("notes", []))
                spread = "" if summary["std"] is None or same else f" ± {100 * summary['std']:.1f}"
                cells.append(f"{100 * summary['mean']:.1f}{spread}" + (" (same supports every round)" if same else ""))
            rows.append(f"| {name} | " + " | ".join(cells) + " |")
        if not any(column_means.values()):
            continue
        mean_cells = [f"{100 * np.mean(v):.1f}" if v else "n/a" for v in column_means.values()]
        lines += [f"### {TITLES[metric]}", "", "| category | " + " | ".join(f"K={k}" for k in shots) + " |",
                  "|---|" + "---|" * len(shots), *rows, "| **mean** | " + " | ".join(mean_cells) + " |", ""]
    notes = [f"{name} K={k}: {note}" for name, per_cat in results.items() for k, r in per_cat.items()
             for note in r.get("notes", [])]
    if notes:
        lines += ["Notes: " + "; ".join(notes) + ".", ""]
    sources = [f"{name} K={k}: {r['support']}" for name, per_cat in results.items() for k, r in per_cat.items()
               if "support" in r]
    if sources:
        lines += ["Support sets: " + "; ".join(sources) + ".", ""]
    if report.get("skipped"):
        lines += ["Skipped: " + "; ".join(f"{s['category']} K={s['shot']} ({s['reason']})" for s in report["skipped"])
                  + ".", ""]
    return "\n".join(lines)
