"""``rank_history.png``: ranks as a heat-map, one row per (block, module type), one column per allocation."""

from __future__ import annotations

import json
from pathlib import Path


def plot_rank_history(history_json: Path, out_png: Path) -> Path:
    """Read ``rank_history.json`` and draw it; rows are sorted by modality group, block and type."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from mobilepeft.io import atomic_file

    data = json.loads(Path(history_json).read_text())
    branches, events = data["branches"], data["events"]
    names = sorted(branches, key=lambda n: (branches[n]["group"], branches[n]["block"], n))
    grid = np.array([[e["ranks"][n] for e in events] for n in names], dtype=float)
    labels = [f"{branches[n]['group']} {branches[n]['block']:>2} {n.rpartition('.')[2]}" for n in names]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(events) + 3), max(4.0, 0.16 * len(names) + 1.5)))
    image = ax.imshow(grid, aspect="auto", interpolation="nearest", cmap="viridis")
    ax.set_xticks(range(len(events)), [f"{e['step']}\n{e['kind'][:4]}" for e in events], fontsize=7)
    ax.set_yticks(range(len(names)), labels, fontsize=max(4, min(8, 600 // max(len(names), 1))))
    ax.set_xlabel("allocation (step, kind)")
    ax.set_title(f"ranks under --schedule {data['schedule']['kind']} (budget {data['budget']:,} parameters)")
    fig.colorbar(image, ax=ax, label="rank")
    fig.tight_layout()
    with atomic_file(out_png) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return Path(out_png)
