"""``mnistgen report``: the self-contained HTML page on a reproduction or run folder, one module per job.

:mod:`.html` the HTML vocabulary and the page's frame, :mod:`.results` what is read from the folder (the scores as
typed records), :mod:`.sections` the sections on SPEC's runs, :mod:`.beyond` the section on the options beyond SPEC,
:mod:`.build` the whole page. The report imports nothing from the pipeline that writes the folder
(:mod:`mnistgen.reproduce`); both read its layout from :mod:`mnistgen.reproduction`.
"""

from .build import build_report, write_report
from .html import Markup, escape, format_value, page, section, table

__all__ = ["Markup", "build_report", "escape", "format_value", "page", "section", "table", "write_report"]
