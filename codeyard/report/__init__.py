"""The report of a run: a `RunReport` built from the run and its events, rendered as Markdown
or as one self-contained HTML file. Building and rendering are pure; only `events` does I/O."""

from codeyard.report.html import render_html
from codeyard.report.markdown import render_markdown
from codeyard.report.model import RunReport, build_report

__all__ = ["RunReport", "build_report", "render_html", "render_markdown"]
