"""Board papers: per site an HTML page and an A4 PDF, and the programme summary.

`render_reports(db, out)` reads the warehouse and writes `out/index.html`,
`out/programme.pdf` and `out/sites/<site>.html` and `.pdf`. Every published table passes
through `reports.disclosure`; charts are embedded SVG, so every page works offline.
"""

from reports.render import render_reports

__all__ = ["render_reports"]
