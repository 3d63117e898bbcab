"""``report.html``: one self-contained page describing a reproduction folder (or a single VAE or GAN run).

Everything the page shows is read from the folder (:mod:`mnistgen.reproduction`'s layout, or :mod:`mnistgen.runs`'s),
every figure embedded as a ``data:`` URI; the one file the builder writes is the page itself (atomically).
"""

from __future__ import annotations

import time
from pathlib import Path

from ..errors import MnistgenError
from ..files import atomic_write, read_json
from ..reproduction import Reproduction
from ..runs import RunDir
from . import sections
from .beyond import beyond_section
from .html import escape, page, value_html
from .results import folder_runs, read_json_if_present, scored_sets

PAGE_TITLES = {"reproduce": "mnistgen: reproduction of the specification", "vae": "mnistgen: VAE run",
               "gan": "mnistgen: GAN run"}


def build_report(folder: str | Path) -> str:
    """The HTML of the report on ``folder`` (a reproduction folder, or one VAE or GAN run folder)."""
    root = RunDir(folder).path
    if not root.is_dir():
        raise MnistgenError(f"{root}: no such folder")
    if not (root / "config.json").is_file():
        raise MnistgenError(f"{root}: not a reproduction or run folder (no config.json)")
    top = read_json(root / "config.json")
    kind = top.get("kind") if isinstance(top, dict) else None
    runs, reproduction = folder_runs(root, kind), kind == "reproduce"
    sets, stages = scored_sets(root, runs), read_json_if_present(root / "stages.json")
    environments = {f"{name.upper()} training": run.read_config().get("environment", {})
                    for name, run in runs.items() if run.config.is_file()}
    subtitle = [f"Folder: <code>{escape(root)}</code>",
                f"mnistgen {escape(top.get('mnistgen_version', '?'))}; page built "
                f"{escape(time.strftime('%Y-%m-%d %H:%M:%S %z'))}"]
    banners = sections.sample_banner(runs)
    if reproduction:
        environments = {"reproduction started": top.get("environment", {}), **environments}
        subtitle.append("Settings: " + value_html({k: v for k, v in top.get("config", {}).items() if k != "data"},
                                                  settings=True))
        if Reproduction(root).explorer.is_file():
            subtitle.append('Interactive latent explorer: <a href="explorer.html">explorer.html</a>')
        banners = sections.shortened_banner(top.get("config", {})) + banners
    parts = [("summary", "Summary", banners + sections.summary_section(runs, sets)),
             *((name, sections.MODEL_TITLES[name], sections.run_section(run, name)) for name, run in runs.items()),
             ("scores", "Sample quality", sections.scores_section(sets, stages)),
             ("beyond", "Beyond the spec", beyond_section(Reproduction(root)) if reproduction else ""),
             ("stages", "Time", sections.stages_section(stages)),
             ("environment", "Versions", sections.environment_section(environments))]
    return page(PAGE_TITLES[kind], subtitle, parts)


def write_report(folder: str | Path, out: str | Path | None = None) -> Path:
    """Build the report on ``folder`` and write it (default ``folder/report.html``); returns the path."""
    text = build_report(folder)
    path = Path(out).expanduser().resolve() if out else RunDir(folder).path / "report.html"
    atomic_write(path, lambda h: h.write(text), mode="w")
    return path
