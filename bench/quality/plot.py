"""The figure of docs/quality.md: per task, the NLL gap closed against the budget, one line per policy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

POLICY_COLOURS = {"brightness": "C0", "h2o": "C1", "random": "C2", "recency": "C3", "tova": "C4"}


def draw(
    rows: list[dict[str, Any]], path: Path, title: str, only: set[str] | None = None, by_base: bool = False
) -> None:
    """One panel per task; `only` limits the lines to those policies; `by_base` colours a variant as the policy it
    varies (recall on and off side by side)."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display here or on a cluster node
    import matplotlib.pyplot as plt

    tasks = sorted({r["task"] for r in rows})
    policies = sorted(
        {r["policy"] for r in rows if "gap_closed" in r and (only is None or r["policy"] in only)},
        key=lambda p: (p != "brightness", p),
    )
    columns = min(3, len(tasks))
    lines = -(-len(tasks) // columns)
    figure, axes = plt.subplots(lines, columns, figsize=(4.6 * columns, 3.6 * lines), squeeze=False, sharey=True)
    # One colour per line in every panel (the five policies keep C0-C4 in either figure); variants are dashed.
    plain = sorted(POLICY_COLOURS.keys() & set(policies))
    colours = {p: POLICY_COLOURS[p] for p in plain}
    others = iter(f"C{i}" for i in range(5, 10))
    colours.update({p: next(others, "C9") for p in policies if p not in colours and not by_base})
    if by_base:
        colours.update({p: POLICY_COLOURS.get(p.partition(":")[0], "C9") for p in policies if p not in colours})
    for ax, task in zip(axes.flat, tasks, strict=False):
        for number, policy in enumerate(policies):
            shift = 1.2 * (number - (len(policies) - 1) / 2)  # side by side, so the intervals do not overlap
            mine = sorted((r for r in rows if r["task"] == task and r["policy"] == policy), key=lambda r: r["budget"])
            if not mine:
                continue
            x = [100 * r["budget"] + shift for r in mine] + [100]
            y = [r["gap_closed"]["mean"] for r in mine] + [1.0]  # no pruning closes the whole gap by definition
            low = [r["gap_closed"]["mean"] - r["gap_closed"]["ci"][0] for r in mine] + [0.0]
            high = [r["gap_closed"]["ci"][1] - r["gap_closed"]["mean"] for r in mine] + [0.0]
            style: dict[str, Any] = {"linewidth": 1.4, "alpha": 0.85, "color": colours[policy]}
            if policy.partition(":")[0] == "brightness" and (policy == "brightness" or by_base):
                style.update(linewidth=2.6, alpha=1.0, zorder=3)
            if ":" in policy:
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
