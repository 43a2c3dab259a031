"""HTML pages to A4 PDFs with WeasyPrint, in worker processes that start straight away.

The pages carry their own print stylesheet (A4, margins, running footer, page numbers)
and embed their charts, so a PDF needs nothing but its HTML file. WeasyPrint needs Pango
and HarfBuzz from the system (`make system-deps` installs them on Debian).

Workers are plain `python -m reports.pdf` processes reading one job per line on stdin.
They start before the first page is written, so loading WeasyPrint (several seconds)
overlaps with building the pages, and they do not depend on how the caller was started
(a scheduler's threads, a script without a main guard).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import tempfile
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import IO

log = logging.getLogger(__name__)

# Below this many documents per worker, starting a worker costs more than it saves.
MIN_DOCUMENTS_PER_WORKER = 4
SYSTEM_PACKAGES = "libpango-1.0-0 libpangoft2-1.0-0 libharfbuzz-subset0 fonts-dejavu-core"


class PdfError(RuntimeError):
    """PDFs could not be written; the message says what to install or fix."""


def _weasyprint():
    try:
        import weasyprint
    except (ImportError, OSError) as exc:
        raise PdfError(
            f"WeasyPrint cannot load ({exc}); install the Python package from the lock file "
            f"and the system libraries: `make system-deps` or `apt-get install {SYSTEM_PACKAGES}`"
        ) from exc
    # WeasyPrint reports each CSS property it does not know (screen-only ones) as a warning.
    logging.getLogger("weasyprint").setLevel(logging.ERROR)
    return weasyprint


def render_pdf(html_path: Path, pdf_path: Path, created: datetime) -> Path:
    """One HTML page to one PDF; `created` fixes the timestamps written into the file."""
    weasyprint = _weasyprint()
    # No base URL: links stay relative (a paper moved with its folder still links up),
    # and the output does not depend on where the folder is. Pages embed everything else.
    document = weasyprint.HTML(string=html_path.read_text(encoding="utf-8"), base_url=None)
    # fontTools, when it subsets fonts, stamps them with the time unless SOURCE_DATE_EPOCH
    # (the reproducible-builds convention) says otherwise.
    previous = os.environ.get("SOURCE_DATE_EPOCH")
    os.environ["SOURCE_DATE_EPOCH"] = str(int(created.timestamp()))
    try:
        document.write_pdf(str(pdf_path), pdf_identifier=pdf_path.name.encode("utf-8"))
    finally:
        if previous is None:
            os.environ.pop("SOURCE_DATE_EPOCH", None)
        else:
            os.environ["SOURCE_DATE_EPOCH"] = previous
    return pdf_path


def default_workers() -> int:
    configured = os.environ.get("VANGUARD_REPORT_WORKERS")
    if configured:
        return max(1, int(configured))
    return max(1, min(os.cpu_count() or 1, 4))


class PdfRenderer:
    """Collects (html, pdf) jobs and renders them: in worker processes when there are
    enough documents to be worth it, else in this process when the renderer closes.

    Use as a context manager; `submit` as each HTML page is written; leaving the block
    waits for every PDF and raises PdfError if any failed.
    """

    def __init__(self, created: datetime, n_documents: int, workers: int | None = None):
        self.created = created
        wanted = workers or default_workers()
        self.n_workers = min(wanted, n_documents // MIN_DOCUMENTS_PER_WORKER)
        self.pending: list[tuple[Path, Path]] = []
        self.written: list[Path] = []
        self.load: list[float] = []
        self.processes: list[tuple[subprocess.Popen, IO[str]]] = []

    def __enter__(self) -> PdfRenderer:
        if self.n_workers > 1:
            header = json.dumps({"created": self.created.isoformat()}) + "\n"
            for _ in range(self.n_workers):
                errors = tempfile.TemporaryFile("w+", encoding="utf-8")
                process = subprocess.Popen(
                    [sys.executable, "-m", "reports.pdf"], stdin=subprocess.PIPE,
                    stderr=errors, text=True, encoding="utf-8",
                )
                assert process.stdin is not None
                process.stdin.write(header)
                process.stdin.flush()
                self.processes.append((process, errors))
                self.load.append(0.0)
        return self

    def submit(self, html: Path, pdf: Path, cost: float = 1.0) -> None:
        """Queue one document; `cost` (relative work) balances the workers."""
        self.written.append(pdf)
        if not self.processes:
            self.pending.append((html, pdf))
            return
        index = self.load.index(min(self.load))
        self.load[index] += cost
        stdin = self.processes[index][0].stdin
        assert stdin is not None
        try:
            stdin.write(json.dumps({"html": str(html), "pdf": str(pdf)}) + "\n")
            stdin.flush()
        except OSError:
            # The worker has died (its error is reported on exit): render here instead.
            self.load[index] = float("inf")
            self.pending.append((html, pdf))

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        failures = []
        for process, errors in self.processes:
            assert process.stdin is not None
            with contextlib.suppress(OSError):  # already dead: its exit code says why
                process.stdin.close()
            if process.wait() != 0:
                errors.seek(0)
                lines = errors.read().strip().splitlines()
                failures.append(lines[-1] if lines else f"worker exited {process.returncode}")
            errors.close()
        if kind is None:
            for html, pdf in self.pending:
                render_pdf(html, pdf, self.created)
        if failures and kind is None:
            raise PdfError("PDF rendering failed: " + "; ".join(failures))
        log.info("reports: %d PDFs (%d worker processes)", len(self.written),
                 len(self.processes))


def main() -> None:
    """Worker: a header line with the creation time, then one job per line until EOF."""
    _weasyprint()  # load while the caller is still building pages
    created = datetime.fromisoformat(json.loads(sys.stdin.readline())["created"])
    for line in sys.stdin:
        job = json.loads(line)
        render_pdf(Path(job["html"]), Path(job["pdf"]), created)


if __name__ == "__main__":
    main()
