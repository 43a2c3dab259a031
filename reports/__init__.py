"""Board-paper reports: HTML pages per site and for the programme, with plots."""

from reports.render import render_reports

__all__ = ["render_reports"]
