"""Self-contained HTML reports: one run (``report.html``) and several runs side by side (the comparison page).

Everything is in the one file: images as base64 ``data:`` URIs, inline CSS, no script and no network access, so the
page can be mailed or archived as is. Figures are PNG bytes made by the caller (``esreid.viz.plots``,
``esreid.viz.ranklist``); ``None`` in place of a figure (a plot with nothing to draw) is skipped.

Each metrics cell carries ``id="metric-<row>-<key>"`` and ``data-run``, ``data-metric``, ``data-value`` (the raw
fraction, empty when missing) and ``data-std`` attributes, so a test or a script can read the numbers back.
"""

from __future__ import annotations

import base64
import html
import os
import platform
import time
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Sequence

from esreid.console import format_seconds
from esreid.evaluation.metric_keys import is_number, reported
from esreid.files import atomic_write

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:2rem auto;max-width:1400px;
padding:0 1rem;color:#1f2328;line-height:1.45}
h1{margin-bottom:.2rem}h2{border-bottom:1px solid #d0d7de;padding-bottom:.2rem;margin-top:2rem}
.sub{color:#656d76;margin-top:0}
table{border-collapse:collapse;margin:.5rem 0}
th,td{border:1px solid #d0d7de;padding:.3rem .7rem;text-align:right}
th{background:#f6f8fa}td.name,th.name{text-align:left}
figure{margin:1rem 0}figcaption{font-weight:600;margin-bottom:.3rem}
img{max-width:100%;height:auto;border:1px solid #eaeef2}
summary{cursor:pointer}pre{background:#f6f8fa;padding:.8rem;overflow:auto;font-size:.85rem}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def png_data_uri(png: bytes) -> str:
    """``data:image/png;base64,...`` for PNG bytes; anything else (e.g. a file path given by mistake) is refused."""
    if not isinstance(png, (bytes, bytearray)) or bytes(png[:8]) != PNG_SIGNATURE:
        start = f" starting {bytes(png[:8])!r}" if isinstance(png, (bytes, bytearray)) else f" {png!r:.40}"
        raise ValueError(f"expected PNG bytes, got {type(png).__name__}{start}")
    return "data:image/png;base64," + base64.b64encode(bytes(png)).decode("ascii")


@dataclass
class RunSummary:
    """One run on the comparison page: its metrics (with ``cmc``, the CMC at ranks 1..50, when available) and the
    href of its own report, relative to the comparison page (empty: no link)."""

    name: str
    metrics: Mapping[str, Any]
    report: str = ""


def metrics_table(runs: Sequence[RunSummary]) -> str:
    """An HTML table with one row per run (metrics as fractions, with ``<key>_std`` where the protocol reports one)
    and a column per metric their protocols declare (:mod:`esreid.evaluation.metric_keys`; percentages in %); the
    name links to the run's report when it has one."""
    columns = list({m.key: m for run in runs for m in reported(run.metrics)}.values())
    head = "".join(f"<th>{_e(m.label)}{' (%)' * m.percent}</th>" for m in columns)
    body = []
    for i, run in enumerate(runs):
        label = f'<a href="{_e(run.report)}">{_e(run.name)}</a>' if run.report else _e(run.name)
        cells = [f'<td class="name">{label}</td>']
        for m in columns:
            key = m.key
            v, std = run.metrics.get(key), run.metrics.get(f"{key}_std")
            ok, has_std = is_number(v), is_number(std)
            text = (m.show(v) + (f" ± {m.show(std)}" if has_std else "")) if ok else "–"
            value, spread = repr(float(v)) if ok else "", repr(float(std)) if has_std else ""
            cells.append(f'<td id="metric-{i}-{key}" data-run="{_e(run.name)}" data-metric="{key}" '
                         f'data-value="{value}" data-std="{spread}">{text}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<table class="metrics"><thead><tr><th class="name">run</th>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table>")


def _figures(figures: Mapping[str, Optional[bytes]]) -> str:
    return "\n".join(f'<figure><figcaption>{_e(caption)}</figcaption><img src="{png_data_uri(png)}" '
                     f'alt="{_e(caption)}"></figure>' for caption, png in figures.items() if png is not None)


def _key_value_table(rows: Mapping[str, Any]) -> str:
    return ('<table class="kv">' + "".join(f'<tr><th class="name">{_e(k)}</th><td class="name">{_e(v)}</td></tr>'
                                           for k, v in rows.items()) + "</table>")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> Optional[float]:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return None


def environment_info() -> Dict[str, str]:
    """Versions (python, torch, esreid, numpy) and hardware (CPU model and cores, memory, GPUs) of this machine."""
    import numpy
    import torch

    import esreid

    cuda = torch.cuda.is_available()
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else []
    memory = _memory_gib()
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "esreid": esreid.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "CPU": f"{_cpu_model()}, {os.cpu_count()} logical cores",
        "memory": f"{memory:.1f} GiB" if memory else "unknown",
        "GPU": ", ".join(gpus) if gpus else "none",
    }


def _page(title: str, sections: Sequence[str], subtitle: str = "") -> str:
    sub = f'<p class="sub">{_e(subtitle)}</p>' if subtitle else ""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{_e(title)}</title>'
            f"<style>{CSS}</style></head>\n<body><h1>{_e(title)}</h1>{sub}\n" + "\n".join(sections)
            + "\n</body></html>\n")


def _section(heading: str, content: str) -> str:
    return f'<section><h2>{_e(heading)}</h2>\n{content}</section>' if content else ""


def report_html(title: str, metrics: Mapping[str, Any], *, plots: Mapping[str, Optional[bytes]] = None,
                grids: Mapping[str, Optional[bytes]] = None, config_yaml: str = "",
                timings: Mapping[str, float] = None, environment: Optional[Mapping[str, Any]] = None,
                generated: Optional[str] = None) -> str:
    """The report of one run as a self-contained HTML string.

    Args:
        title: page title, e.g. ``"ES-Net on Market-1501"``.
        metrics: the evaluation dict (fractions; ``<key>_std`` where reported); extra keys are ignored.
        plots: caption -> PNG bytes (training curves, CMC, ...); ``None`` values are skipped.
        grids: caption -> PNG bytes of explanation / rank grids.
        config_yaml: the run's ``config.yaml`` text.
        timings: name -> seconds (e.g. ``{"training": 117.0, "evaluation": 0.3}``).
        environment: versions and hardware; default :func:`environment_info` of this machine.
        generated: the date line; default now.
    """
    env = environment_info() if environment is None else environment
    sections = [
        _section("Metrics", metrics_table([RunSummary(title, metrics)])),
        _section("Plots", _figures(plots or {})),
        _section("Explanations", _figures(grids or {})),
        _section("Timings", _key_value_table({k: format_seconds(v) for k, v in (timings or {}).items()})
                 if timings else ""),
        _section("Config", f"<details><summary>config.yaml ({len(config_yaml.splitlines())} lines)</summary>"
                           f"<pre>{_e(config_yaml)}</pre></details>" if config_yaml else ""),
        _section("Environment", _key_value_table(env) if env else ""),
    ]
    return _page(title, sections, f"generated {generated or time.strftime('%Y-%m-%d %H:%M:%S')}")


def write_report(path: str, title: str, metrics: Mapping[str, Any], **kwargs) -> str:
    """:func:`report_html` written atomically to ``path`` (a temporary file, then a rename). Returns ``path``."""
    return atomic_write(path, report_html(title, metrics, **kwargs))


def comparison_html(title: str, runs: Sequence[RunSummary], *, plots: Mapping[str, Optional[bytes]] = None,
                    environment: Optional[Mapping[str, Any]] = None, generated: Optional[str] = None) -> str:
    """Several runs side by side: the metrics table (one row per run, linked to its report), the CMC curves of the
    runs that have ``cmc`` on one plot, any extra ``plots`` (caption -> PNG bytes), and the environment."""
    from esreid.viz.plots import plot_cmc

    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise ValueError(f"comparison: run names must be distinct, got {names}")
    curves = {r.name: r.metrics["cmc"] for r in runs if r.metrics.get("cmc")}
    figures = {"CMC": plot_cmc(curves) if curves else None, **(plots or {})}
    env = environment_info() if environment is None else environment
    sections = [
        _section("Metrics", metrics_table(runs)),
        _section("Plots", _figures(figures)),
        _section("Environment", _key_value_table(env) if env else ""),
    ]
    return _page(title, sections, f"generated {generated or time.strftime('%Y-%m-%d %H:%M:%S')}")


def write_comparison(path: str, title: str, runs: Sequence[RunSummary], **kwargs) -> str:
    """:func:`comparison_html` written atomically to ``path``. Returns ``path``."""
    return atomic_write(path, comparison_html(title, runs, **kwargs))
