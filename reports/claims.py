"""The "Claim check" section of a site's paper: the site's own figure and the honest one.

Reads claim_checks rows (written by the pipeline's claims step) and renders an HTML fragment:
a plain-English paragraph per claim, then a table of claimed, naive, comparison and
controlled changes. Every value from the warehouse is escaped, and the cohort and admission
counts go through `reports.disclosure` (rounded to 5, 1 to 7 shown as `*`) before they are
written anywhere on the page, the sentences included.
"""

from __future__ import annotations

import math

import polars as pl
from markupsafe import Markup, escape

from reports import wording
from reports.disclosure import SUPPRESSED, Formatter, Table, publish

COHORT = "cohort"


def _pct(value: float | None) -> str:
    return "not available" if value is None or not math.isfinite(value) else \
        wording.signed_pct(value)


def _fewer(value: float) -> str:
    """'30% fewer' or '4% more', for sentences."""
    return f"{abs(value):.0f}% {'fewer' if value < 0 else 'more'}"


def _count(value: int | None) -> str:
    return SUPPRESSED if value is None else f"{value:,}"


def _disclosed(rows: pl.DataFrame) -> pl.DataFrame:
    """The rows with n_site and n_comparison disclosure-controlled (nulls become 0 first,
    which disclosure leaves as 0; they are shown as 'not available' in the text)."""
    from reports.disclosure import disclose

    filled = rows.with_columns(pl.col("n_site", "n_comparison").fill_null(0).cast(pl.Int64))
    return disclose(filled, ["n_site", "n_comparison"])


def _share(naive: float, comparison: float) -> str:
    """How much of the site's recomputed fall (both negative) the comparison's accounts for."""
    ratio = comparison / naive
    return "all" if ratio >= 1 else "most" if ratio >= 0.5 else "part"


def claim_sentences(row: dict) -> list[str]:
    """What the site said, what comparable patients or areas did, and what is left."""
    claimed = row["claimed_pct"]
    cohort = row["check_type"] == COHORT
    what = ("admissions among its highest-risk patients" if cohort
            else row["outcome_label"].lower())
    months = row["window_months"]
    lines = [f"The site reported {_fewer(claimed)} {what} (its claim: {row['claim']})."]
    if row["naive_pct"] is not None:
        if cohort:
            lines.append(
                f"Recomputed from the extract the same way (the top-scoring patients before "
                f"go-live, {_count(row['n_site'])} people, followed for {months} months), "
                f"their admissions changed by {_pct(row['naive_pct'])}.")
        else:
            lines.append(
                f"Recomputed from the extract, the rate in the {months} months after go-live "
                f"was {_pct(row['naive_pct'])} against the {months} months before.")
    if row["comparison_pct"] is not None:
        if cohort:
            picked = (f"Similar patients in comparison areas, picked by the same rule on the "
                      f"same dates ({_count(row['n_comparison'])} people),")
            naive = row["naive_pct"]
            if row["comparison_pct"] < 0 and naive is not None and naive < 0:
                lines.append(
                    f"{picked} also had {_fewer(row['comparison_pct'])} admissions: "
                    f"{_share(naive, row['comparison_pct'])} of the site's fall is what "
                    "happens to any group picked in a bad year (regression to the mean).")
            else:
                lines.append(f"{picked} had {_fewer(row['comparison_pct'])} admissions.")
        else:
            lines.append(
                f"In the matched comparison areas the same {months} months changed by "
                f"{_pct(row['comparison_pct'])}.")
    if row["did_pct"] is not None:
        window = "" if cohort else " over the whole period since go-live"
        lines.append(
            f"The difference attributable to the vanguard{window} is "
            f"{_pct(row['did_pct'])} (95% CI {_pct(row['ci_low'])} to "
            f"{_pct(row['ci_high'])}).")
    else:
        lines.append("No controlled estimate is available, so the site's figure cannot be "
                     "separated from changes that happen without any intervention.")
    return lines


def claims_table(rows: pl.DataFrame) -> Table:
    """Claimed, recomputed, comparison and controlled changes, one row per claim."""
    def text(value: object) -> str:
        return _pct(value)  # type: ignore[arg-type]

    intervals = [
        "" if low is None or high is None else wording.interval(low, high)
        for low, high in zip(rows["ci_low"], rows["ci_high"], strict=True)
    ]
    frame = rows.with_columns(
        pl.col("n_site", "n_comparison").fill_null(0).cast(pl.Int64),
        pl.Series("ci", intervals, dtype=pl.String),
    )
    def three(value: object) -> str:
        return f"{value:.3f}"  # type: ignore[str-format]

    formats: dict[str, Formatter] = {
        c: text for c in ("claimed_pct", "naive_pct", "comparison_pct", "did_pct")}
    def fall(value: object) -> str:
        return f"{value:.1f}%"  # type: ignore[str-format]

    formats |= {"p_value": three, "q_value": three, "mde_pct": fall}
    return publish(
        frame,
        {"outcome_label": "Outcome", "claimed_pct": "Site's claim",
         "naive_pct": "Before/after (recomputed)", "comparison_pct": "Comparison",
         "did_pct": "Attributable (DiD)", "ci": "95% CI", "p_value": "p",
         "q_value": "q", "mde_pct": "Smallest detectable fall", "n_site": "Site n",
         "n_comparison": "Comparison n"},
        counts=["n_site", "n_comparison"],
        formats=formats,
        caption="The site's own figure against the same figure in comparison areas",
        notes=["Counts (people in a cohort, or admissions in the before/after windows) "
               "are rounded to the nearest 5; 1 to 7 are shown as *. q is the "
               "Benjamini-Hochberg false discovery rate across all estimates."],
    )


def _cell(tag: str, text: str, numeric: bool, attrs: str = "") -> str:
    css = ' class="num"' if numeric else ""
    return f"<{tag}{attrs}{css}>{escape(text)}</{tag}>"


def _table_html(table: Table) -> str:
    head = "".join(_cell("th", h, num, ' scope="col"')
                   for h, num in zip(table.headers, table.numeric, strict=True))
    body = "".join(
        "<tr>" + "".join(_cell("td", cell.text, num)
                         for cell, num in zip(row, table.numeric, strict=True)) + "</tr>"
        for row in table.rows
    )
    notes = "".join(f"<p class=\"note\">{escape(n)}</p>" for n in table.notes)
    return (f"<div class=\"table-block keep\"><table><caption>{escape(table.caption)}"
            f"</caption><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
            f"{notes}</div>")


def claim_check_section(rows: pl.DataFrame, labels: dict[str, str] | None = None
                        ) -> Markup | None:
    """The section's HTML for one site's claim_checks rows, or None when it has none.

    `labels` maps outcome ids to their labels (the outcome id is used otherwise).
    """
    if rows.height == 0:
        return None
    labels = labels or {}
    labelled = rows.with_columns(
        pl.col("outcome").replace_strict(labels, default=pl.col("outcome"),
                                         return_dtype=pl.String).alias("outcome_label"))
    safe = _disclosed(labelled).with_columns(
        pl.when(pl.col(c) == 0).then(None).otherwise(pl.col(c)).alias(c)
        for c in ("n_site", "n_comparison"))
    # Sentences read the disclosed counts: 0 (no cohort) is "not available", not a count.
    paragraphs = "".join(
        "<p class=\"claim\">" + " ".join(str(escape(s)) for s in claim_sentences(r)) + "</p>"
        for r in safe.iter_rows(named=True)
    )
    html = ("<section class=\"claim-check\"><h2>Claim check</h2>" + paragraphs
            + _table_html(claims_table(labelled)) + "</section>")
    return Markup(html)  # noqa: S704 - every value above went through escape()
