"""Feedback while training: metrics.jsonl, a tqdm progress bar, and the loss-curve PNG."""

import json
import math
import os
from pathlib import Path

from tqdm.auto import tqdm

METRICS_FILE = "metrics.jsonl"
LOSS_CURVE_FILE = "loss_curve.png"


class MetricsLogger:
    """Appends one JSON object per line to `run_dir/metrics.jsonl` (nothing if `run_dir` is None).

    Each write is flushed, so a crashed run keeps every line logged before the crash.
    """

    def __init__(self, run_dir: str | os.PathLike | None, enabled: bool = True):
        self.path = None if run_dir is None or not enabled else Path(run_dir) / METRICS_FILE
        self.history: list[dict] = []

    def log(self, record: dict) -> None:
        record = {k: _jsonable(v) for k, v in record.items()}
        self.history.append(record)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """All records of `run_dir/metrics.jsonl`, in order."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_metrics(run_dir: str | os.PathLike, step: int) -> None:
    """Keep only the records of steps <= `step` (a resumed run re-logs the steps after its
    checkpoint); rewritten atomically."""
    path = Path(run_dir) / METRICS_FILE
    records = read_metrics(run_dir)
    kept = [r for r in records if r.get("step", 0) <= step]
    if len(kept) == len(records):
        return
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
    os.replace(tmp, path)


def progress_bar(total: int, initial: int, enabled: bool):
    return tqdm(total=total, initial=initial, disable=not enabled, unit="step", dynamic_ncols=True)


def plot_loss_curve(run_dir: str | os.PathLike, path: str | os.PathLike | None = None) -> Path:
    """Plot training (and evaluation) loss against step from metrics.jsonl into a PNG."""
    from matplotlib.figure import Figure  # no pyplot: Agg canvas, whatever the backend

    records = read_metrics(run_dir)
    path = Path(path) if path is not None else Path(run_dir) / LOSS_CURVE_FILE
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for key, label in (("loss", "train loss"), ("eval/loss", "eval loss")):
        points = [(r["step"], r[key]) for r in records if r.get(key) is not None]
        if points:
            steps, values = zip(*points, strict=True)
            ax.plot(steps, values, label=label, marker="." if len(points) < 30 else None)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def _jsonable(v):
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else str(v)
    return v
