"""The pictures and the page of an evaluation: matplotlib figures (Agg, no pyplot) and one HTML file beside them.

Every function writes into a folder it is given; pipelines.evaluate hands it a staging folder that is renamed into
place whole, so nothing here needs to be atomic on its own.
"""

import html
import json
import math

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torchvision.utils import make_grid

from prior.sampling import describe_settings
from store.figures import FIGURES, format_figure

def _new_figure(width, height):
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)  # the Agg canvas, set on this figure only: no global backend switch
    return figure


def plot_curves(path, records, panels, title):
    """One panel per (panel title, x key, [(y key, legend)], log y) from metrics.jsonl records.

    Records lack keys freely (train lines have no test figures and the other way round); a panel draws the
    records that have both its x and its y. Returns False, writing nothing, when no panel has a point.
    """
    drawn = [(name, x_key, [(key, label, [(r[x_key], r[key]) for r in records if x_key in r and key in r])
                            for key, label in series], log)
             for name, x_key, series, log in panels]
    drawn = [(name, x_key, [s for s in series if s[2]], log) for name, x_key, series, log in drawn]
    drawn = [panel for panel in drawn if panel[2]]
    if not drawn:
        return False
    figure = _new_figure(3.6 * len(drawn), 3.0)
    for axes, (name, x_key, series, log) in zip(np.atleast_1d(figure.subplots(1, len(drawn))), drawn):
        for key, label, points in series:
            x, y = zip(*points)
            axes.plot(x, y, marker="." if len(points) < 30 else None, label=label)
        if log and all(y > 0 for *_, points in series for _, y in points):
            axes.set_yscale("log")
        axes.set_title(name)
        axes.set_xlabel(x_key)
        axes.grid(alpha=0.3)
        if len(series) > 1:
            axes.legend()
    figure.suptitle(title)
    figure.savefig(path, dpi=100)
    return True


def plot_usage(path, histograms, title):
    """Bars of how often each code appears, one row per level (one level unless the quantizer is residual)."""
    figure = _new_figure(9, 2.2 * len(histograms))
    for level, (axes, counts) in enumerate(zip(np.atleast_1d(figure.subplots(len(histograms), 1)), histograms)):
        counts = np.asarray(counts, dtype=np.float64)
        total = max(counts.sum(), 1.0)
        p = counts[counts > 0] / total
        perplexity = float(np.exp(-(p * np.log(p)).sum())) if len(p) else 0.0
        axes.bar(np.arange(len(counts)), counts / total, width=1.0)
        axes.set_xlim(-0.5, len(counts) - 0.5)
        axes.set_ylabel("share")
        axes.set_title(f"{'level ' + str(level) + ': ' if len(histograms) > 1 else ''}{(counts > 0).sum()} of "
                       f"{len(counts)} codes used, perplexity {perplexity:.1f}", fontsize=9)
    axes.set_xlabel("code")
    figure.suptitle(title)
    figure.savefig(path, dpi=100)


def plot_mosaic(path, rows, labels, title):
    """rows: float image tensors (k, c, H, W) in [0, 1], one row each, labelled on the left."""
    width = max(len(row) for row in rows)
    side = rows[0].shape[-1]
    # 3.5 screen pixels per image pixel at 100 dpi (a 28-pixel image is ~100 pixels wide): large enough to judge.
    inches = (side + 2) * 3.5 / 100
    figure = _new_figure(max(6.5, inches * width + 1.5), inches * len(rows) + 0.6)
    for axes, row, label in zip(np.atleast_1d(figure.subplots(len(rows), 1)), rows, labels):
        # Short rows (classes with fewer samples) are padded with white so every row starts at the left edge.
        row = torch.cat([row.float().clamp(0, 1).cpu(), torch.ones(width - len(row), *row.shape[1:])])
        grid = make_grid(row, nrow=width, padding=2, pad_value=1.0)  # (3, H', W')
        axes.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest", aspect="equal")
        axes.set_xticks([])
        axes.set_yticks([])
        axes.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
        for spine in axes.spines.values():
            spine.set_visible(False)
    figure.suptitle(title)
    figure.savefig(path, dpi=100)


def _format(value):
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.4g}"
    return html.escape(str(value))


def _subject(runs):
    """The page's line on what was scored: a prior's samples, images made elsewhere, or a tokenizer alone."""
    if runs.get("images"):
        return f"Images <code>{html.escape(runs['images'])}</code> (made elsewhere)"
    return f"Prior <code>{html.escape(str(runs['prior'] or 'none (tokenizer only)'))}</code>"


def write_html(path, report, pictures):
    """report.html: the runs, the table of figures, then each picture (file name, caption) that was drawn."""
    figures, runs = report["figures"], report["runs"]
    # Inception's figures are rows only when asked for (features "inception").
    rows = "\n".join(f"<tr><td>{html.escape(figure.name)}</td>"
                     f"<td class=num>{html.escape(format_figure(figure, figures.get(figure.key)))}</td>"
                     f"<td>{html.escape(figure.reading)}</td></tr>" for figure in FIGURES
                     if not figure.key.startswith("inception_") or report.get("inception"))
    per_class = report.get("per_class_sample_accuracy") or {}
    class_rows = "\n".join(f"<tr><td>{html.escape(name)}</td><td class=num>{_format(value)}</td></tr>"
                           for name, value in per_class.items())
    class_table = (f"<h2>Classifier accuracy on samples, per class asked for</h2>\n<table>{class_rows}</table>"
                   if per_class else "")
    images = "\n".join(f'<figure><img src="{html.escape(name)}" alt="{html.escape(caption)}">'
                       f"<figcaption>{html.escape(caption)}</figcaption></figure>" for name, caption in pictures)
    settings = html.escape(json.dumps(report["settings"]))
    sampled = (f"Sampled with {html.escape(describe_settings(report['settings']))}.<br>\n"
               if report["counts"]["samples"] and runs.get("prior") else "")
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Evaluation {html.escape(report["created"])}</title>
<style>
body {{ font-family: sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
td, th {{ border-bottom: 1px solid #ddd; padding: 0.3em 0.8em; text-align: left; }}
td.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
figure {{ margin: 1.5em 0; }} img {{ max-width: 100%; }} figcaption {{ color: #555; font-size: 0.9em; }}
code {{ font-size: 0.9em; }}
</style></head><body>
<h1>Evaluation</h1>
<p>Tokenizer <code>{html.escape(str(runs["tokenizer"] or "none"))}</code><br>
{_subject(runs)}<br>
Data set <code>{html.escape(report["dataset"]["dataset"])}</code>; reference classifier
<code>{html.escape(report["classifier"]["directory"])}</code> (test accuracy
{_format(report["classifier"].get("test_accuracy"))}).<br>
{sampled}Settings <code>{settings}</code>; {report["seconds"]["total"]:.1f} s in all.</p>
<p>Frechet distances are between Gaussian fits to the reference classifier's penultimate features; they are
comparable only between reports made with the same classifier (its weights' SHA-256 is in report.json). Precision,
recall, density and coverage estimate each set's manifold by balls reaching every point's third nearest neighbour in
the same features: the first of each pair measures fidelity, the second diversity. Those marked Inception-v3 follow
the papers' protocol and can be set beside other projects' figures.</p>
<table><tr><th>figure</th><th>value</th><th>how to read it</th></tr>
{rows}
</table>
{class_table}
{images}
</body></html>
"""
    path.write_text(page)
