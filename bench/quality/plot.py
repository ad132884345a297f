"""The figure of docs/quality.md: per task, the NLL gap closed against the budget, one line per policy."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def draw(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display here or on a cluster node
    import matplotlib.pyplot as plt

    tasks = sorted({r["task"] for r in rows})
    policies = sorted({r["policy"] for r in rows if "gap_closed" in r}, key=lambda p: (p != "brightness", p))
    columns = min(3, len(tasks))
    lines = -(-len(tasks) // columns)
    figure, axes = plt.subplots(lines, columns, figsize=(4.6 * columns, 3.6 * lines), squeeze=False, sharey=True)
    # One colour per policy in every panel; variants of brightness ("brightness:decay_rate=0") dashed, in its family.
    plain = [p for p in policies if ":" not in p]
    colours = {p: f"C{i}" for i, p in enumerate(plain)}
    shades = iter(["#6baed6", "#08519c", "#9ecae1", "#3182bd", "#c6dbef"])
    colours.update({p: next(shades, "#6baed6") for p in policies if ":" in p})
    for ax, task in zip(axes.flat, tasks, strict=False):
        for policy in policies:
            mine = sorted((r for r in rows if r["task"] == task and r["policy"] == policy), key=lambda r: r["budget"])
            if not mine:
                continue
            x = [100 * r["budget"] for r in mine] + [100]
            y = [r["gap_closed"]["mean"] for r in mine] + [1.0]  # no pruning closes the whole gap by definition
            low = [r["gap_closed"]["mean"] - r["gap_closed"]["ci"][0] for r in mine] + [0.0]
            high = [r["gap_closed"]["ci"][1] - r["gap_closed"]["mean"] for r in mine] + [0.0]
            style: dict[str, Any] = {"linewidth": 1.4, "alpha": 0.85, "color": colours[policy]}
            if policy == "brightness":
                style.update(linewidth=2.6, alpha=1.0, zorder=3)
            elif ":" in policy:
                style.update(linestyle="--")
            ax.errorbar(x, y, yerr=[low, high], marker="o", markersize=4, capsize=3, label=policy, **style)
        n = next((r["n"] for r in rows if r["task"] == task), 0)
        ax.set_title(f"{task} (n = {n})", fontsize=10)
        ax.axhline(0, color="grey", linewidth=0.8, linestyle=":")
        ax.set_xticks([25, 50, 75, 100])
        ax.set_xlabel("budget, % of the conversation")
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("NLL gap closed")
    for ax in list(axes.flat)[len(tasks) :]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=min(len(labels), 5), fontsize=9, frameon=False)
    figure.suptitle(title, fontsize=11)
    figure.tight_layout(rect=(0, 0.06 + 0.02 * (len(labels) > 5), 1, 0.95))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
