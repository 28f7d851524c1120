"""The evaluation report as one self-contained HTML file: headline table plus plots.

Plots are drawn with matplotlib (Agg) and embedded as base64 PNG, so the file
can be mailed or opened from a Pod's volume without anything next to it.
"""
from __future__ import annotations

import base64
import html
import io

import numpy as np

PLOTS = ["confusion", "perGradeF1", "errorTypes", "calibration", "scores", "models"]


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _fig(w=4.2, h=3.2):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(w, h))


def confusion_plot(matrix: list[list[int]], grades: list[str]) -> str:
    fig, ax = _fig()
    m = np.array(matrix)
    ax.imshow(m, cmap="Blues")
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, str(m[i, j]), ha="center", va="center", color="black" if m[i, j] < m.max() / 2 else "white")
    ax.set_xticks(range(len(grades)), grades, rotation=30)
    ax.set_yticks(range(len(grades)), grades)
    ax.set_xlabel("student")
    ax.set_ylabel("human")
    ax.set_title("Confusion matrix (dev)")
    return _png(fig)


def bars_plot(series: dict[str, dict[str, float]], title: str, ylabel: str) -> str:
    """Grouped bars: one group per key of the inner dicts, one bar per series."""
    fig, ax = _fig(5.2, 3.2)
    keys = list(dict.fromkeys(k for s in series.values() for k in s))
    width = 0.8 / max(1, len(series))
    for n, (name, vals) in enumerate(series.items()):
        ax.bar(np.arange(len(keys)) + n * width, [vals.get(k) or 0 for k in keys], width, label=name)
    ax.set_xticks(np.arange(len(keys)) + width * (len(series) - 1) / 2, keys, rotation=30)
    ax.set_ylim(0, 1)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _png(fig)


def calibration_plot(curves: dict[str, list[dict]]) -> str:
    fig, ax = _fig()
    ax.plot([0, 1], [0, 1], "k:", lw=1, label="perfect")
    for name, bins in curves.items():
        ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o-", label=name)
    ax.set_xlabel("confidence (top grade)")
    ax.set_ylabel("accuracy")
    ax.set_title("Calibration curve (dev)")
    ax.legend(fontsize=8)
    return _png(fig)


def scores_plot(scores: np.ndarray, gold: np.ndarray, grades: list[str], title: str) -> str:
    fig, ax = _fig()
    for g, name in enumerate(grades):
        if (gold == g).any():
            ax.hist(scores[gold == g], bins=20, alpha=0.5, label=f"human: {name}")
    ax.set_xlabel("score")
    ax.set_ylabel("pairs")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _png(fig)


def render(report: dict, data: dict, k: int) -> str:
    """REPORT is report.json's content; DATA holds arrays: gold, studentScores, bm25Scores,
    confusion, reliability {name: bins}."""
    grades = report["grades"]
    models = {n: report[n] for n in ("student", "previousStudent", "bm25") if report.get(n)}
    cols = ["accuracy", "macroF1", f"ndcg@{k}", "auc", "qwk", "rmse", "ece"]
    rows = "".join(f"<tr><th>{html.escape(n)}</th>" + "".join(f"<td>{_fmt(m.get(c))}</td>" for c in cols) + "</tr>"
                   for n, m in models.items())
    gold = np.asarray(data["gold"])
    imgs = {
        "confusion": confusion_plot(data["confusion"], grades),
        "perGradeF1": bars_plot({n: m["perGradeF1"] for n, m in models.items()}, "Per-grade F1 (dev)", "F1"),
        "calibration": calibration_plot(data["reliability"]),
        "scores": scores_plot(np.asarray(data["studentScores"]), gold, grades, "Student expected grade by human grade"),
        "models": bars_plot({n: {c: m.get(c) for c in ("accuracy", "macroF1", f"ndcg@{k}", "qwk") if m.get(c) is not None}
                             for n, m in models.items()}, "Student vs previous student vs BM25", "value"),
    }
    if report.get("adversarial", {}).get("perType"):
        imgs["errorTypes"] = bars_plot({"student": report["adversarial"]["perType"]},
                                       "Accuracy per error type (adversarial set)", "accuracy")
    if data.get("bm25Scores") is not None:
        imgs["bm25Scores"] = scores_plot(np.asarray(data["bm25Scores"]), gold, grades, "BM25 score by human grade")
    cal = report.get("calibration") or {}
    cal_line = (f"Calibration: temperature {cal['temperature']} fitted on {cal['fitPairs']} dev pairs; ECE on the other "
                f"{cal['heldOutPairs']} pairs {cal['eceBefore']} before, {cal['eceAfter']} after."
                if cal.get("method") == "temperature" else "Calibration: none.")
    figures = "".join(f'<figure id="{n}"><img alt="{n}" src="data:image/png;base64,{b}"></figure>' for n, b in imgs.items())
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>ADORE round {html.escape(report['round'])}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}figure{{display:inline-block;margin:6px}}</style></head><body>
<h1>Round {html.escape(report['round'])}: evaluation</h1>
<p>Held-out human labels: {report['devPairs']} pairs over {report['devQueries']} queries. Human labels used for training:
{report['humanLabelsUsedForTraining']} (the teacher's seed).</p>
<table><tr><th>model</th>{''.join(f'<th>{c}</th>' for c in cols)}</tr>{rows}</table>
<p>{html.escape(cal_line)}</p>
{figures}
</body></html>
"""


def _fmt(v):
    return "–" if v is None else f"{v:.4f}"
