"""Narrow tables in the paper's layout: rows are categories, one table per metric and K, our methods beside the
paper's numbers. The mean row averages only the targets every filled column has, and names them: a mean over
other targets (one method's 6 beside another's 5) would compare unlike things."""


def common_targets(columns, targets):
    """Targets every column with at least one value has a value for."""
    used = [values for _, values, _ in columns if any(v is not None for v in values.values())]
    return [t for t in targets if all(values.get(t) is not None for values in used)]


def comparison_table(columns, targets):
    """columns: [(heading, {target: value or None}, {target: cell text})]; Markdown lines of the table, its mean
    row and a line saying which targets the mean is over."""
    common = common_targets(columns, targets)
    lines = ["| category | " + " | ".join(heading for heading, _, _ in columns) + " |",
             "|---|" + "---|" * len(columns)]
    for target in targets:
        lines.append(f"| {target} | " + " | ".join(texts.get(target, "—") for _, _, texts in columns) + " |")
    means = [f"{sum(values[t] for t in common) / len(common):.1f}"
             if common and any(v is not None for v in values.values()) else "—" for _, values, _ in columns]
    lines.append(f"| **mean** ({len(common)} of {len(targets)}) | " + " | ".join(means) + " |")
    if not common:
        lines += ["", "No mean: no target has a value in every filled column."]
    elif len(common) < len(targets):
        lines += ["", f"Mean over {', '.join(common)}: the targets every filled column has."]
    return lines
