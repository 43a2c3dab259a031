"""What each page shows, as plain data for the templates: sentences, tables and charts.

Pure functions of the report data. Every table is built by `disclosure.publish` and every
count-based series goes through `disclosure.disclose` before it is drawn.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from hashlib import sha256

import polars as pl
from markupsafe import Markup

from reports import plots, wording
from reports.claims import claim_check_section
from reports.disclosure import Rate, Table, disclose, publish
from reports.inputs import ReportData
from reports.statistics import (
    BALANCE_COVARIATES,
    benjamini_hochberg,
    standardised_differences,
)

ALPHA = 0.05
MESSAGE_LIMIT = 300
PATIENT_LEVEL_KINDS = {"episodes"}
QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
# Published estimates on the same outcomes (Morciano et al. 2020, Table 1): their outcome,
# the factor taking their rate to ours (per 1,000 a month) and how they report it.
REFERENCE_OUTCOMES = {
    "emergency_admissions": ("emerg_adm_rate_per_1000_month", 1.0,
                             "emergency admissions per 1,000 people per month"),
    "bed_days": ("bed_days_rate_per_100_month", 10.0, "bed days per 100 people per month"),
}
REFERENCE_SITE_TYPES = {"population-based": "Population-based (PACS, MCP)",
                        "care home": "Care homes"}
# Which of our model types each of Morciano's site types covers.
REFERENCE_MODEL_TYPES = {"population-based": ("PACS", "MCP"), "care home": ("care-home",)}


def page_name(site_id: str) -> str:
    """A safe file name for a site's pages: the id itself when it is a plain slug."""
    if re.fullmatch(r"[a-z0-9][a-z0-9-]{0,62}", site_id):
        return site_id
    return "site-" + sha256(site_id.encode("utf-8")).hexdigest()[:12]


def with_q_values(results: pl.DataFrame) -> pl.DataFrame:
    """Results with Benjamini-Hochberg q-values across every site and outcome, and each
    design's minimum detectable effect, so a null can be read as "no effect" or "could not
    have seen one"."""
    q = benjamini_hochberg(results["p_value"].to_list())
    mde = [design_mde(row) for row in results.iter_rows(named=True)]
    return results.with_columns(pl.Series("q_value", q, dtype=pl.Float64),
                                pl.Series("mde_pct", mde, dtype=pl.Float64))


def design_mde(row: dict) -> float | None:
    """The smallest fall the site's design would detect with 80% power at 5% (two-sided),
    from its standard error (the placebo spread under placebo inference; t on the fit's
    degrees of freedom under cluster-robust errors)."""
    from transforms.power import minimum_detectable_effect

    se = row.get("se")
    if not isinstance(se, int | float) or not math.isfinite(se) or se <= 0:
        return None
    df = row.get("df") if row.get("inference") == "cluster_robust" else None
    return minimum_detectable_effect(float(se), ALPHA, 0.8, df or None).pct_reduction


def _mde(value: object) -> str:
    if not isinstance(value, int | float) or math.isnan(value):
        return ""
    return f"{value:.0f}%" if value >= 1 else f"{value:.1f}%"


def _fmt_p(value: object) -> str:
    """p and q values to three decimals; very small ones as <0.001."""
    if not isinstance(value, int | float) or math.isnan(value):
        return ""
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def _pct(value: object) -> str:
    return wording.signed_pct(float(value))  # type: ignore[arg-type]


def safe_message(kind: str | None, message: str | None) -> str:
    """Free text from checks, fit to publish. Messages quote values from the file: for a
    patient-level file nothing of the message is published (the values may identify
    people); otherwise quoted values (which may be small counts) are blanked out."""
    if not message:
        return ""
    if kind in PATIENT_LEVEL_KINDS:
        return "Details withheld for a patient-level file; see the quarantine reason file."
    text = QUOTED.sub("'\u2026'", message)
    return text if len(text) <= MESSAGE_LIMIT else text[: MESSAGE_LIMIT - 1] + "\u2026"


# -- data quality ---------------------------------------------------------------------


def _checks(validations: pl.DataFrame) -> pl.DataFrame:
    """Per provenance event: how many validation runs passed, as text."""
    return validations.filter(pl.col("event_id").is_not_null()).group_by("event_id").agg(
        pl.format("{} of {} passed", pl.col("success").sum(), pl.len()).alias("checks"),
    )


def files_table(files: pl.DataFrame, validations: pl.DataFrame) -> Table:
    """One row per file received: its size, what was refused, and its checks."""
    frame = files.join(_checks(validations), on="event_id", how="left").with_columns(
        pl.struct("kind", "message")
        .map_elements(lambda r: safe_message(r["kind"], r["message"]), return_dtype=pl.String)
        .alias("note"),
        pl.col("checks").fill_null("not run"),
    )
    return publish(
        frame,
        {"file": "File", "extract_date": "Extract", "kind": "Kind",
         "rows_received": "Rows received", "rows_quarantined": "Rows refused",
         "status": "Status", "checks": "Validation", "note": "Note"},
        counts=["rows_received", "rows_quarantined"],
        caption="Files received and their validation",
    )


def sources_table(files: pl.DataFrame, validations: pl.DataFrame,
                  site_ids: Sequence[str]) -> Table:
    """Sources (sites, and the national comparison pool) with their files, rows and checks:
    every source with a refused file or a failed check, and the comparison pool; the rest
    are summed up in a note (their details are on the site pages)."""
    frame = (
        files.join(validations.select("event_id", "success"), on="event_id", how="left")
        .group_by("source_id")
        .agg(
            pl.col("event_id").n_unique().alias("files"),
            pl.col("rows_received").sum().cast(pl.Int64),
            pl.col("rows_quarantined").sum().cast(pl.Int64),
            (pl.col("status") == "quarantined").sum().alias("refused_files"),
            (~pl.col("success")).sum().alias("failed_checks"),
            pl.format("{} of {} passed", pl.col("success").sum(), pl.col("success").count())
            .alias("checks"),
        )
        .sort("source_id")
    )
    flagged = (pl.col("refused_files") > 0) | (pl.col("failed_checks") > 0)
    shown = frame.filter(flagged | ~pl.col("source_id").is_in(list(site_ids)))
    clean = frame.height - shown.height
    notes = [f"The other {clean} source(s) loaded every file and passed every check."] \
        if clean else []
    return publish(
        shown,
        {"source_id": "Source", "files": "Files", "refused_files": "Files refused",
         "rows_received": "Rows received", "rows_quarantined": "Rows refused",
         "checks": "Validation"},
        counts=["rows_received", "rows_quarantined"],
        caption="Files received by source",
        notes=notes,
    )


def _failures(validations: pl.DataFrame) -> pl.DataFrame:
    rows = []
    for record in validations.iter_rows(named=True):
        for failure in json.loads(record["result_json"] or "{}").get("failures", []):
            rows.append({
                "file": record["file"] or "", "suite": record["suite"],
                "rule": str(failure.get("rule", "")), "column": failure.get("column") or "",
                "rows": int(failure.get("unexpected_count") or 0),
                "note": safe_message(record["kind"], failure.get("message")),
            })
    schema = {"file": pl.String, "suite": pl.String, "rule": pl.String, "column": pl.String,
              "rows": pl.Int64, "note": pl.String}
    return pl.DataFrame(rows, schema=schema)


@dataclass(frozen=True)
class Quality:
    """A data-quality summary rendered from stored validation results and provenance."""

    sentence: str
    files: Table
    refused: Table | None
    failures: Table | None
    steps: Table | None = None


def failed_steps_table(run_steps: pl.DataFrame) -> Table | None:
    """Pipeline steps whose last attempt in the latest run failed (the run log), so a
    reader knows which results were not refreshed. A refused file's reason is in the files
    tables, where it is made fit to publish; here it is only pointed to."""
    if not run_steps.height or "status" not in run_steps.columns:
        return None
    failed = run_steps.filter(pl.col("status") == "failed")
    if not failed.height:
        return None
    frame = failed.with_columns(
        pl.col("item").fill_null(""),
        pl.struct("task", "message").map_elements(
            lambda r: ("The file was refused; see the files tables."
                       if r["task"] == "ingest" else safe_message(None, r["message"])),
            return_dtype=pl.String).alias("reason"),
    )
    return publish(
        frame,
        {"task": "Step", "item": "Site or source", "attempt": "Attempts",
         "reason": "Why it failed"},
        caption="Pipeline steps that failed in the latest run (their earlier results stand)",
    )


def data_quality(files: pl.DataFrame, validations: pl.DataFrame, scope: str,
                 site_ids: Sequence[str] | None = None,
                 run_steps: pl.DataFrame | None = None) -> Quality:
    """Files received and refused, and the checks that failed: for one site file by file,
    or for the programme (given every site id) source by source."""
    by_source = site_ids is not None
    refused = files.filter(pl.col("status") == "quarantined")
    failed = validations.filter(~pl.col("success")).height
    sentence = (
        f"{files.height} file(s) received for {scope}: {files.height - refused.height} loaded "
        f"and {refused.height} refused (quarantined). {validations.height} validation run(s) "
        f"recorded; {validations.height - failed} passed every check"
        + (f" and {failed} failed." if failed else ".")
    )
    refused_table = publish(
        refused.with_columns(
            pl.struct("kind", "message")
            .map_elements(lambda r: safe_message(r["kind"], r["message"]),
                          return_dtype=pl.String).alias("reason")),
        {"source_id": "Source", "file": "File", "extract_date": "Extract",
         "reason": "Why it was refused"},
        caption="Files refused",
    ) if by_source and refused.height else None
    failures = _failures(validations)
    failure_table = publish(
        failures,
        {"file": "File", "suite": "Suite", "rule": "Rule", "column": "Column",
         "rows": "Rows affected", "note": "What failed"},
        counts=["rows"], caption="Checks that failed",
    ) if failures.height else None
    table = (sources_table(files, validations, site_ids) if site_ids is not None
             else files_table(files, validations))
    steps = failed_steps_table(run_steps) if run_steps is not None else None
    return Quality(sentence, table, refused_table, failure_table, steps)


def _steps_for(run_steps: pl.DataFrame, site_id: str) -> pl.DataFrame:
    if not run_steps.height or "item" not in run_steps.columns:
        return run_steps
    return run_steps.filter(pl.col("item") == site_id)


# -- a site's page --------------------------------------------------------------------


def _activity(panel: pl.DataFrame, areas: Sequence[str]) -> pl.DataFrame:
    """Monthly counts and population summed over a set of areas, per outcome."""
    return (
        panel.filter(pl.col("area_code").is_in(list(areas)))
        .group_by("outcome", "month")
        .agg(pl.col("count").sum().cast(pl.Int64), pl.col("population").sum().cast(pl.Int64))
        .sort("outcome", "month")
    )


def series_panels(panel: pl.DataFrame, series: pl.DataFrame, results: list[dict],
                  site_areas: Sequence[str], comparators: Sequence[str]
                  ) -> list[plots.SeriesPanel]:
    """Observed and comparison rates recomputed from disclosed monthly counts, with the
    modelled counterfactual (an estimate, so exempt) from the model series."""
    site = _activity(panel, site_areas).rename({"count": "site_count",
                                                "population": "site_population"})
    comparison = _activity(panel, comparators).rename({"count": "comparison_count",
                                                       "population": "comparison_population"})
    safe = disclose(
        site.join(comparison, on=["outcome", "month"], how="left")
        .with_columns(pl.col("comparison_count").fill_null(0)),
        counts=["site_count", "comparison_count"],
        rates={"observed_rate": Rate("site_count", "site_population", per=1000.0),
               "comparison_rate": Rate("comparison_count", "comparison_population",
                                       per=1000.0)},
    ).join(series.select("outcome", "month", "counterfactual_rate"),
           on=["outcome", "month"], how="left")
    panels = []
    for row in results:
        part = safe.filter(pl.col("outcome") == row["outcome"]).sort("month")
        panels.append(plots.SeriesPanel(
            title=row["outcome_label"], months=part["month"].to_list(),
            observed=part["observed_rate"].to_list(),
            counterfactual=part["counterfactual_rate"].to_list(),
            comparison=part["comparison_rate"].to_list(),
        ))
    return panels


def activity_table(panel: pl.DataFrame, results: list[dict], site_areas: Sequence[str],
                   go_live: date) -> tuple[Table, dict[str, float | None]]:
    """Counts and crude rates before and after go-live in the site's areas (disclosed),
    and the site's own before/after % change computed from the disclosed figures."""
    monthly = _activity(panel, site_areas)
    totals = monthly.group_by("outcome").agg(
        pl.col("count").filter(pl.col("month") < go_live).sum().alias("pre_count"),
        pl.col("population").filter(pl.col("month") < go_live).sum().alias("pre_exposure"),
        pl.col("count").filter(pl.col("month") >= go_live).sum().alias("post_count"),
        pl.col("population").filter(pl.col("month") >= go_live).sum().alias("post_exposure"),
    )
    order = pl.DataFrame({"outcome": [r["outcome"] for r in results],
                          "outcome_label": [r["outcome_label"] for r in results]})
    frame = order.join(totals, on="outcome", how="left").with_columns(
        pl.col("pre_count", "post_count", "pre_exposure", "post_exposure")
        .fill_null(0).cast(pl.Int64))
    rates = {"pre_rate": Rate("pre_count", "pre_exposure", per=1000.0, decimals=2),
             "post_rate": Rate("post_count", "post_exposure", per=1000.0, decimals=2)}
    table = publish(
        frame,
        {"outcome_label": "Outcome", "pre_count": "Before go-live",
         "pre_rate": "Per 1,000 per month", "post_count": "After go-live",
         "post_rate": "Per 1,000 per month"},
        counts=["pre_count", "post_count"], rates=rates,
        caption="Hospital use in the site's own areas (counts rounded to the nearest 5; "
                "rates from the rounded counts)",
    )
    safe = disclose(frame, ["pre_count", "post_count"], rates)
    change = {
        r["outcome"]: (100.0 * (r["post_rate"] / r["pre_rate"] - 1.0)
                       if r["pre_rate"] and r["post_rate"] is not None else None)
        for r in safe.iter_rows(named=True)
    }
    return table, change


def claims_table(results: list[dict], claims: pl.DataFrame,
                 crude_change: dict[str, float | None]
                 ) -> tuple[Table | None, list[str], list[str]]:
    """Claimed against estimated for each outcome the site made a claim about, with a
    sentence per claim and the claims' sources; no table when there is no claim."""
    claimed = {r["outcome"]: r for r in claims.iter_rows(named=True)}
    rows, sentences, sources = [], [], []
    for result in results:
        claim = claimed.get(result["outcome"])
        if not claim:
            continue
        crude = crude_change.get(result["outcome"])
        low, high = result["pct_ci_low"], result["pct_ci_high"]
        rows.append({
            "outcome": result["outcome_label"],
            "claimed": wording.signed_pct(claim["claimed_pct_change"]),
            "crude": "" if crude is None else wording.signed_pct(crude),
            "estimate": f"{wording.signed_pct(result['pct_change'])} "
                        f"({wording.interval(low, high)})",
            "verdict": wording.claim_verdict(claim["claimed_pct_change"], low, high),
        })
        sentences.append(wording.claim_sentence(
            result["outcome_label"], claim["claimed_pct_change"], result["pct_change"],
            low, high))
        if claim["source"] not in sources:
            sources.append(claim["source"])
    if not rows:
        return None, sentences, sources
    table = publish(
        pl.DataFrame(rows),
        {"outcome": "Outcome", "claimed": "Site's claim (before/after)",
         "crude": "Before/after in our data", "estimate": "Against comparison areas (95% CI)",
         "verdict": "Claim and estimate"},
        caption="What the site claimed and what the comparison shows",
    )
    return table, sentences, sources


def estimates_table(results: list[dict]) -> Table:
    frame = pl.DataFrame(results).with_columns(
        pl.struct("pct_ci_low", "pct_ci_high")
        .map_elements(lambda r: wording.interval(r["pct_ci_low"], r["pct_ci_high"]),
                      return_dtype=pl.String).alias("ci"),
        pl.format("{} / {}", "n_treated_areas", "n_comparison_areas").alias("areas"),
    )
    return publish(
        frame,
        {"outcome_label": "Outcome", "pct_change": "Change vs comparison areas",
         "ci": "95% CI", "p_value": "p", "q_value": "q",
         "mde_pct": "Smallest detectable fall", "rating": "Evidence",
         "areas": "Areas (site / comparison)"},
        formats={"pct_change": _pct, "p_value": _fmt_p, "q_value": _fmt_p, "mde_pct": _mde},
        caption="Estimated effect of the new care model (model estimates)",
    )


def balance(data: ReportData, site: dict, results: list[dict], features: pl.DataFrame,
            pool: Sequence[str]) -> tuple[plots.Figure | None, Table]:
    """Love plot and table of standardised differences before and after matching."""
    matched = data.comparators.filter(pl.col("site_id") == site["site_id"])["area_code"]
    smd = standardised_differences(features, list(site["areas"]), matched.to_list(), pool)
    labels = {f"pre_rate:{r['outcome']}": f"{r['outcome_label']} rate before go-live"
              for r in results}
    labels |= BALANCE_COVARIATES
    order = list(labels)
    smd = (
        smd.filter(pl.col("covariate").is_in(order))
        .with_columns(
            pl.col("covariate").replace_strict(labels, default=None).alias("label"),
            pl.col("covariate").replace_strict({c: i for i, c in enumerate(order)},
                                               default=len(order)).alias("order"),
        )
        .sort("order")
    )
    notes = []
    missing = smd.filter(pl.col("smd_before").is_null())["label"].to_list()
    if missing:
        notes.append("Not available (no area descriptors loaded, or no spread among eligible "
                     f"areas): {', '.join(missing)}.")
    shown = smd.filter(pl.col("smd_before").is_not_null())
    figure = plots.love_plot(
        [(r["label"], r["smd_before"], r["smd_after"]) for r in shown.iter_rows(named=True)],
        site["name"],
    ) if shown.height else None

    def number(value: object) -> str:
        text = f"{value:,.2f}"
        return "0.00" if text == "-0.00" else text.replace("-", "\u2212")

    table = publish(
        smd,
        {"label": "Characteristic", "site_mean": "Site areas", "matched_mean": "Matched areas",
         "smd_before": "SMD before matching", "smd_after": "SMD after"},
        formats={c: number for c in ("site_mean", "matched_mean", "smd_before", "smd_after")},
        caption="Balance: area means and standardised mean differences (SMD) before and after "
                "matching; |SMD| under 0.1 is conventionally taken as balanced",
        notes=notes,
    )
    return figure, table


def comparators_table(comparators: pl.DataFrame) -> Table:
    """Each site area with its matched comparison areas, nearest first."""
    frame = (
        comparators.sort("treated_area", "rank")
        .group_by("treated_area", maintain_order=True)
        .agg(
            pl.col("area_code").str.join(", ").alias("areas"),
            pl.col("distance").max().alias("furthest"),
        )
    )
    return publish(
        frame,
        {"treated_area": "Site area", "areas": "Comparison areas (nearest first)",
         "furthest": "Largest distance"},
        formats={"furthest": lambda v: f"{v:.2f}"},  # type: ignore[str-format]
        caption="Matched comparison areas (nearest on the pre-period rate and population; "
                "distance in standard deviations)",
    )


def _optional(row: dict, column: str) -> object:
    """A column that older warehouses may lack, as None when absent or null."""
    value = row.get(column)
    return None if isinstance(value, float) and math.isnan(value) else value


def event_study_figures(event_study: pl.DataFrame, results: list[dict],
                        site_name: str) -> list[plots.Figure]:
    """One chart per outcome with an event study: % change against comparison areas by
    quarter since go-live, with the pre-trend test in words under it."""
    figures = []
    for row in results:
        part = event_study.filter(pl.col("outcome") == row["outcome"]).sort("e")
        if not part.height:
            continue
        first = part.row(0, named=True)
        p_value = _optional(first, "p_pretrend")
        inference = _optional(first, "inference")
        note = wording.pretrend_sentence(p_value if isinstance(p_value, float) else None,
                                         ALPHA)
        if isinstance(p_value, float):
            note += f" {wording.describe_pretrend_test(str(inference))}"
        note += " The reference quarter (open circle) is fixed at zero."
        figures.append(plots.event_study(
            [(r["e"], r["estimate"], r["ci_low"], r["ci_high"])
             for r in part.iter_rows(named=True)],
            row["outcome_label"], site_name, note=note))
    return figures


def _inference_used(results: list[dict]) -> list[dict]:
    """Each inference method used, why, for which outcomes and how many estimates."""
    used: dict[tuple[str, str], dict] = {}
    for row in results:
        key = (row["inference"], row.get("inference_reason") or "")
        entry = used.setdefault(key, {"method": wording.describe_inference(key[0]),
                                      "reason": key[1], "outcomes": [], "n": 0})
        entry["n"] += 1
        if row["outcome_label"] not in entry["outcomes"]:
            entry["outcomes"].append(row["outcome_label"])
    return list(used.values())


def methods(results: list[dict], run: dict) -> dict:
    """The estimator, the inference used for each outcome and why, and the caveats."""
    warnings = []
    for row in results:
        # One entry per distinct warnings text: the text itself may contain "; ".
        warning = (row.get("warnings") or "").strip()
        if warning and warning not in warnings:
            warnings.append(warning)
    return {
        "estimators": sorted({wording.describe_estimator(r["estimator"]) for r in results}),
        "inference": _inference_used(results),
        "warnings": warnings,
        "study_start": run.get("study_start"),
        "study_end": run.get("study_end"),
        "protocol_name": run.get("protocol_name", ""),
    }


@dataclass
class SitePage:
    """Everything one site's board paper shows."""

    site: dict
    model_type: str
    page: str
    results: list[dict]
    primary: dict | None
    others: list[dict]
    claims: Table | None
    claim_sentences: list[str]
    claim_sources: list[str]
    estimates: Table
    activity: Table
    series: plots.Figure | None
    event_study: list[plots.Figure]
    love: plots.Figure | None
    balance: Table
    comparators: Table
    quality: Quality
    methods: dict
    few_areas: bool = False
    claim_check: Markup | None = None  # reports.claims: the site's claim checks, or None


def _rated(results: pl.DataFrame) -> list[dict]:
    rows = []
    for row in results.sort("outcome_order").iter_rows(named=True):
        row["headline"] = wording.headline(row["outcome_label"], row["pct_change"],
                                           row["pct_ci_low"], row["pct_ci_high"],
                                           row["p_value"], ALPHA)
        row["rating"] = wording.evidence_rating(row["p_value"], row["n_treated_areas"],
                                                row.get("q_value"), ALPHA)
        rows.append(row)
    return rows


def site_page(data: ReportData, site: dict, results: pl.DataFrame, features: pl.DataFrame,
              pool: Sequence[str]) -> SitePage:
    """One site's paper: headline, claims, plots, balance, data quality and methods."""
    site_id = site["site_id"]
    rows = _rated(results.filter(pl.col("site_id") == site_id))
    areas = list(site["areas"])
    comparators = data.comparators.filter(pl.col("site_id") == site_id)
    distinct = comparators["area_code"].unique(maintain_order=True).to_list()
    panels = series_panels(data.panel, data.series.filter(pl.col("site_id") == site_id), rows,
                           areas, distinct)
    series = (plots.observed_vs_counterfactual(panels, site["go_live"], site["name"])
              if panels and any(p.months for p in panels) else None)
    activity, crude = activity_table(data.panel, rows, areas, site["go_live"])
    claims, sentences, sources = claims_table(
        rows, data.claims.filter(pl.col("site_id") == site_id), crude)
    love, balance_table = balance(data, site, rows, features, pool)
    quality = data_quality(data.files.filter(pl.col("source_id") == site_id),
                           data.validations.filter(pl.col("source_id") == site_id),
                           "this site", run_steps=_steps_for(data.run_steps, site_id))
    return SitePage(
        site=site, model_type=wording.describe_model_type(site["model_type"]),
        page=page_name(site_id), results=rows, primary=rows[0] if rows else None,
        others=rows[1:], claims=claims, claim_sentences=sentences, claim_sources=sources,
        estimates=estimates_table(rows) if rows else publish(pl.DataFrame(), {}),
        activity=activity, series=series,
        event_study=event_study_figures(
            data.event_study.filter(pl.col("site_id") == site_id), rows, site["name"]),
        love=love, balance=balance_table, comparators=comparators_table(comparators),
        quality=quality, methods=methods(rows, data.run),
        few_areas=any(r["n_treated_areas"] < 5 for r in rows),
        claim_check=claim_check_section(
            data.claim_checks.filter(pl.col("site_id") == site_id)
            if data.claim_checks.height else data.claim_checks,
            {r["outcome"]: r["outcome_label"] for r in rows}),
    )


# -- the programme page ---------------------------------------------------------------


@dataclass
class OutcomeForest:
    label: str
    figure: plots.Figure  # the sites, with published estimates on the same scale
    reference: plots.Figure | None = None  # a separate published-estimates chart, if any


@dataclass
class ProgrammePage:
    """The programme summary: forest plots, every estimate, and data quality."""

    sites: list[tuple[str, str]]  # (name, page name) for each site with a paper
    n_sites: int
    n_estimates: int
    findings: list[str]
    forests: list[OutcomeForest]
    table: Table
    quality: Quality
    reference_source: str
    run: dict
    methods: dict


def published_on_our_scale(morciano: pl.DataFrame, results: pl.DataFrame, outcome: str
                           ) -> tuple[list[plots.Interval], str]:
    """Morciano et al.'s published estimates for an outcome as % changes, and a note
    saying how they were converted.

    They report absolute differences in a monthly rate; dividing by a baseline rate gives
    the % change our forest plots show. The baseline is the mean pre-go-live rate of this
    report's sites of the same kind (population-based: PACS and MCP; care homes), one mean
    per site as in their site-level analysis. The baseline's own uncertainty is ignored,
    and the conversion assumes our sites' rates are like those of the sites they studied.
    """
    if outcome not in REFERENCE_OUTCOMES or not results.height:
        return [], ""
    name, to_ours, unit = REFERENCE_OUTCOMES[outcome]
    rows = morciano.filter(pl.col("outcome") == name)
    ours = results.filter(pl.col("outcome") == outcome)
    intervals, baselines = [], []
    for site_type in rows["site_type"].unique(maintain_order=True).to_list():
        models = REFERENCE_MODEL_TYPES.get(site_type, ())
        rates = ours.filter(pl.col("model_type").is_in(list(models)))["pre_rate_per_1000"]
        if not rates.len() or not rates.mean():
            continue
        baseline = float(rates.mean())  # type: ignore[arg-type]
        label = REFERENCE_SITE_TYPES.get(site_type, site_type)
        baselines.append(f"{label.lower()}: {baseline:.2f} per 1,000 a month over "
                         f"{rates.len()} site(s)")
        scale = 100.0 * to_ours / baseline
        intervals += [plots.Interval(f"{label}: {r['window']}", scale * r["did_estimate"],
                                     scale * r["ci95_low"], scale * r["ci95_high"])
                      for r in rows.filter(pl.col("site_type") == site_type)
                      .iter_rows(named=True)]
    if not intervals:
        return [], ""
    note = (f"Diamonds: Morciano et al. 2020 (Table 1), who report absolute changes in "
            f"{unit}; shown here as a % of the mean pre-go-live rate of this report's sites "
            f"of the same kind ({'; '.join(baselines)}) so that both are on one scale. The "
            "conversion ignores the baseline's own uncertainty and assumes our sites' rates "
            "are like those of the sites they studied.")
    return intervals, note


def _findings(results: pl.DataFrame) -> list[str]:
    sentences = []
    for outcome in results.sort("outcome_order")["outcome"].unique(maintain_order=True):
        part = results.filter(pl.col("outcome") == outcome)
        label = part["outcome_label"][0]
        lower = part.filter((pl.col("p_value") < ALPHA) & (pl.col("pct_change") < 0)).height
        higher = part.filter((pl.col("p_value") < ALPHA) & (pl.col("pct_change") > 0)).height
        q_lower = part.filter((pl.col("q_value") < ALPHA) & (pl.col("pct_change") < 0)).height
        sentences.append(
            f"{label}: statistically significantly lower than in comparison areas at {lower} "
            f"of {part.height} sites and higher at {higher}; {q_lower} of the falls remain "
            f"significant after allowing for the {results.height} estimates in this report "
            "(q < 0.05)."
        )
    return sentences


def _estimate_cell(row: dict) -> str:
    return (f"{wording.signed_pct(row['pct_change'])} "
            f"({wording.interval(row['pct_ci_low'], row['pct_ci_high'])})\n"
            f"p {_fmt_p(row['p_value'])} \u00b7 q {_fmt_p(row['q_value'])}"
            + (f" \u00b7 MDE {_mde(row['mde_pct'])}" if row.get("mde_pct") else ""))


def all_estimates_table(joined: pl.DataFrame) -> Table:
    """One row per site, one column per outcome: change, 95% CI, p and q in each cell."""
    if not joined.height:
        return publish(pl.DataFrame(), {})
    ordered = joined.sort("outcome_order")
    outcomes = ordered.unique("outcome", maintain_order=True)
    labels = dict(zip(outcomes["outcome"], outcomes["outcome_label"], strict=True))
    cells = ordered.with_columns(
        pl.struct("pct_change", "pct_ci_low", "pct_ci_high", "p_value", "q_value", "mde_pct")
        .map_elements(_estimate_cell, return_dtype=pl.String).alias("cell"))
    wide = (
        cells.pivot(on="outcome", index=["site_id", "name", "model_type"], values="cell")
        .sort("model_type", "name")
        .with_columns(
            pl.col("site_id").map_elements(lambda s: f"sites/{page_name(s)}.html",
                                           return_dtype=pl.String).alias("href"),
            pl.col("site_id").map_elements(lambda s: f"sites/{page_name(s)}.pdf",
                                           return_dtype=pl.String).alias("pdf_href"),
            pl.lit("PDF").alias("pdf"),
        )
    )
    return publish(
        wide,
        {"name": "Site", "model_type": "Model"} | labels | {"pdf": "Paper"},
        links={"name": "href", "pdf": "pdf_href"},
        caption="Every site and outcome: % change against matched comparison areas (95% CI), "
                "p, q (Benjamini-Hochberg false discovery rate across all estimates here) and "
                "MDE, the smallest fall the design would detect with 80% power",
    )


def programme_page(data: ReportData, results: pl.DataFrame) -> ProgrammePage:
    joined = results.join(data.sites.select("site_id", "name", "model_type"), on="site_id",
                          how="inner")
    forests = []
    for outcome in joined.sort("outcome_order")["outcome"].unique(maintain_order=True):
        part = joined.filter(pl.col("outcome") == outcome)
        label = part["outcome_label"][0]
        rows = [plots.Interval(r["name"], r["pct_change"], r["pct_ci_low"], r["pct_ci_high"],
                               r["model_type"]) for r in part.iter_rows(named=True)]
        published, note = published_on_our_scale(data.morciano, joined, outcome)
        forests.append(OutcomeForest(
            label,
            plots.forest(rows, f"{label}: change against matched comparison areas",
                         "% change against matched comparison areas (95% CI)",
                         f"the percentage change in {label.lower()}",
                         reference=published, note=note),
        ))
    table = all_estimates_table(joined)
    sources = data.morciano["source"].unique(maintain_order=True).to_list()
    names = joined.unique("site_id").sort("model_type", "name")
    return ProgrammePage(
        sites=[(r["name"], page_name(r["site_id"])) for r in names.iter_rows(named=True)],
        n_sites=joined["site_id"].n_unique(), n_estimates=joined.height,
        findings=_findings(joined) if joined.height else [],
        forests=forests, table=table,
        quality=data_quality(data.files, data.validations, "all sources",
                             site_ids=data.sites["site_id"].to_list(),
                             run_steps=data.run_steps),
        reference_source=sources[0] if sources else "", run=data.run,
        methods=methods(_rated(joined) if joined.height else [], data.run),
    )
