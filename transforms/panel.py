"""The panels: area x month x outcome for the models, organisation x month x outcome for the
national A&E comparison data. Aggregates only.

Patient identifiers never reach this layer: episodes are counted per file, area, month and
measure inside DuckDB at ingest (`episode_counts_sql`), and the panel is built from those
counts and the sites' aggregate files.
"""

from __future__ import annotations

from datetime import date

import polars as pl

from expectations.contract import (
    AE_MEASURES,
    AE_TYPES,
    emergency_admission_sql,
    mental_health_diagnosis_sql,
    provider_outcome,
)
from transforms.protocol import Outcome

#: Source id of the national comparison pool of areas.
COMPARISON_SOURCE = "comparison"

#: Source id of NHS England's monthly A&E statistics by provider.
NATIONAL_AE_SOURCE = "nhse_ae"

PANEL_COLUMNS = ["area_code", "month", "outcome", "count", "population", "rate_per_1000"]
PROVIDER_PANEL_COLUMNS = ["org_code", "month", "outcome", "count"]
KEY = ["area_code", "month", "measure"]

#: Measures that patient-level episodes define (A&E attendances are not in the episodes).
EPISODE_MEASURES = ("emergency_admissions", "mh_emergency_admissions", "bed_days")


def episode_counts_sql(episodes: str) -> str:
    """SQL counting episodes per area, admission month and measure, in long form.

    - emergency_admissions: episodes with an emergency ADMIMETH code (21-25, 2A-2D, 28),
    - mh_emergency_admissions: those of them with an ICD-10 chapter F primary diagnosis,
    - bed_days: the days from admission to discharge of emergency episodes (a same-day
      stay is 0), counted in the month of admission.

    ``episodes`` is a table name or subquery with the stg_episodes columns. Every area-month
    with any episode gets all three measures, zeros included.
    """
    emergency = emergency_admission_sql("admission_method")
    mental = mental_health_diagnosis_sql("primary_diagnosis")
    return f"""
        SELECT area_code, month, measure, count FROM (
            SELECT area_code, month,
                count(*) FILTER (WHERE emergency) AS emergency_admissions,
                count(*) FILTER (WHERE emergency AND mental) AS mh_emergency_admissions,
                coalesce(sum(discharge_date - admission_date) FILTER (WHERE emergency), 0)
                    AS bed_days
            FROM (
                SELECT area_code, CAST(date_trunc('month', admission_date) AS DATE) AS month,
                    {emergency} AS emergency, {mental} AS mental,
                    admission_date, discharge_date
                FROM {episodes}
            )
            GROUP BY area_code, month
        ) UNPIVOT (count FOR measure IN ({", ".join(EPISODE_MEASURES)}))
    """


def expected_source(site_areas: dict[str, str]) -> pl.Expr:
    """The source an area's figures must come from: its own site, else the national pool."""
    return (
        pl.col("area_code")
        .replace_strict(site_areas, default=COMPARISON_SOURCE, return_dtype=pl.String)
    )


def select_current(staged: pl.DataFrame, site_areas: dict[str, str]) -> pl.DataFrame:
    """Keep each key's row from the area's own source and its latest extract.

    `staged` is stg_aggregate joined to provenance (`extract_date`, `event_id`). A re-issued
    extract supersedes the earlier one key by key, and a vanguard area's own extract wins
    over any national figure for it. An optional boolean `from_episodes` column ranks counts
    derived from episodes above aggregate figures of the same extract date.
    """
    order = ["extract_date", "event_id"]
    if "from_episodes" in staged.columns:
        order.insert(1, "from_episodes")
    return (
        staged.filter(pl.col("source_id") == expected_source(site_areas))
        .sort(order, nulls_last=False)
        .unique(subset=KEY, keep="last", maintain_order=True)
    )


def current_counts(
    aggregate: pl.DataFrame, episodes: pl.DataFrame, site_areas: dict[str, str]
) -> pl.DataFrame:
    """Current counts per area, month and measure from aggregate files and episode counts.

    `aggregate` is stg_aggregate joined to provenance; `episodes` is area_month_episodes
    joined to provenance (no population). Episode counts take the population of the same
    area-month from the current aggregate rows and, within an extract date, win over the
    site's own aggregate figure: the count is then defined by the contract's codes rather
    than by each site's reporting. An area-month with episodes but no aggregate population
    has no rate and is left out, so the panel's completeness check reports it.
    """
    current = select_current(aggregate, site_areas).with_columns(
        pl.lit(False).alias("from_episodes")
    )
    if episodes.height == 0:
        return current
    population = current.group_by(["area_code", "month"]).agg(pl.col("population").max())
    derived = (
        select_current(episodes, site_areas)
        .join(population, on=["area_code", "month"], how="inner")
        .with_columns(pl.lit(True).alias("from_episodes"))
        .select(current.columns)
    )
    return select_current(pl.concat([current, derived]), site_areas)


def episode_disagreements(
    aggregate: pl.DataFrame, episodes: pl.DataFrame, site_areas: dict[str, str]
) -> pl.DataFrame:
    """Keys where a site's aggregate figure and its episode count from the same extract differ."""
    if episodes.height == 0:
        return pl.DataFrame(schema={k: aggregate.schema[k] for k in KEY})
    agg = select_current(aggregate, site_areas).select(*KEY, "extract_date", "count")
    eps = select_current(episodes, site_areas).select(*KEY, "extract_date", "count")
    joined = agg.join(eps, on=[*KEY, "extract_date"], suffix="_episodes")
    return joined.filter(pl.col("count") != pl.col("count_episodes")).sort(KEY)


def build_panel(
    current: pl.DataFrame, outcomes: tuple[Outcome, ...], months: list[date]
) -> pl.DataFrame:
    """Long panel of counts, populations and rates per 1,000 for the protocol's outcomes."""
    measure_to_outcome = pl.DataFrame(
        {"measure": [o.measure for o in outcomes], "outcome": [o.id for o in outcomes]}
    )
    return (
        current.filter(pl.col("month").is_between(min(months), max(months)))
        .join(measure_to_outcome, on="measure", how="inner")
        .with_columns(
            (pl.col("count") / pl.col("population") * 1000.0).alias("rate_per_1000")
        )
        .select(PANEL_COLUMNS)
        .sort(["outcome", "area_code", "month"])
    )


def incomplete_areas(panel: pl.DataFrame, n_months: int) -> pl.DataFrame:
    """Areas and outcomes that do not cover every month of the study window."""
    return (
        panel.group_by(["area_code", "outcome"])
        .agg(pl.len().alias("months"))
        .filter(pl.col("months") != n_months)
        .sort(["area_code", "outcome"])
    )


def build_provider_panel(staged: pl.DataFrame, months: list[date]) -> pl.DataFrame:
    """Long organisation x month x outcome counts from the national A&E staging rows.

    `staged` is stg_nhse_ae joined to provenance; a re-issued file supersedes the earlier one
    row by row (latest extract date, then latest load). Outcomes are
    ``ae_<measure>_<type>``, e.g. ae_attendances_type1 or ae_admissions_other.
    """
    current = (
        staged.filter(pl.col("period").is_between(min(months), max(months)))
        .sort(["extract_date", "event_id"], nulls_last=False)
        .unique(subset=["period", "org_code", "type"], keep="last", maintain_order=True)
    )
    long = [
        current.select(
            "org_code",
            pl.col("period").alias("month"),
            pl.col("type")
            .replace_strict({t: provider_outcome(measure, t) for t in AE_TYPES})
            .alias("outcome"),
            pl.col(measure).cast(pl.Int64).alias("count"),
        )
        for measure in AE_MEASURES
    ]
    if current.height == 0:
        return pl.DataFrame(
            schema={"org_code": pl.String, "month": pl.Date, "outcome": pl.String,
                    "count": pl.Int64}
        )
    return pl.concat(long).select(PROVIDER_PANEL_COLUMNS).sort(["outcome", "org_code", "month"])
