"""The evaluation protocol: what an evaluator pre-registers, loaded from TOML and checked.

The protocol is data, not code: changing a site, an outcome or the estimator means
editing `evaluation.toml`, never the pipeline. It is validated at load against
`protocol_schema.json` so a typo fails loudly with the key that is wrong and the values
that would be allowed, before any data is touched.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import dataclass, field
from datetime import date
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema

from transforms.months import add_months, month_range, parse_month


class ProtocolError(ValueError):
    """The protocol file breaks the schema or a rule between its parts."""


@dataclass(frozen=True)
class Outcome:
    id: str
    label: str
    measure: str
    per_population: int = 1000
    primary: bool = False


@dataclass(frozen=True)
class Site:
    id: str
    name: str
    model_type: str
    go_live: date
    areas: tuple[str, ...]
    announced: date | None = None
    nhse_vanguard_number: int | None = None
    patient_level: bool = False


@dataclass(frozen=True)
class Comparison:
    pool: str
    matches_per_area: int
    match_on: tuple[str, ...]
    matching_outcome: str
    metric: str = "standardised"
    caliper: float | None = None
    replacement: bool = True
    method: str = "nearest"
    synthetic_control: bool = False


@dataclass(frozen=True)
class ClaimCohort:
    """How a risk-stratified cohort is picked ([claims.cohort]); see transforms/cohort.py."""

    top_pct: float = 4.0
    baseline_months: int = 12
    follow_up_months: int = 12
    weights: tuple[tuple[str, float], ...] = (
        ("emergency_admissions", 1.0), ("age_decades", 0.1), ("icd10_chapters", 0.25))
    comparison_areas: tuple[str, ...] = ()


@dataclass(frozen=True)
class Claim:
    """A site's own before/after claim ([[claims.sites]]) and how it is checked."""

    site: str
    check: str  # "cohort" or "before_after"
    outcome: str
    claimed_pct: float
    claim: str
    source: str = ""
    window_months: int = 7


@dataclass(frozen=True)
class Claims:
    cohort: ClaimCohort = field(default_factory=ClaimCohort)
    sites: tuple[Claim, ...] = ()


@dataclass(frozen=True)
class Protocol:
    name: str
    start: date
    end: date
    pre_period_months: int
    outcomes: tuple[Outcome, ...]
    comparison: Comparison
    estimator: str
    alpha: float
    inference: str
    cluster: str
    sites: tuple[Site, ...]
    sha256: str
    placebo_donors: int = 40
    seed: int = 0
    excluded_sites: tuple[Site, ...] = ()
    claims: Claims = field(default_factory=Claims)

    @property
    def months(self) -> list[date]:
        """Every month of the study window, first days, in order."""
        return month_range(self.start, self.end)

    @property
    def site_areas(self) -> dict[str, str]:
        """Map of area code to the site it belongs to, for the sites in this run."""
        return {area: site.id for site in self.sites for area in site.areas}

    @property
    def vanguard_areas(self) -> dict[str, str]:
        """Every vanguard area, including sites left out of this run: never comparators."""
        return {area: site.id for site in self.sites + self.excluded_sites for area in site.areas}

    @property
    def primary_outcome(self) -> Outcome:
        return next((o for o in self.outcomes if o.primary), self.outcomes[0])

    def site(self, site_id: str) -> Site:
        for site in self.sites:
            if site.id == site_id:
                return site
        known = ", ".join(s.id for s in self.sites)
        raise ProtocolError(f"unknown site '{site_id}'; the protocol has: {known}")

    def outcome(self, outcome_id: str) -> Outcome:
        for outcome in self.outcomes:
            if outcome.id == outcome_id:
                return outcome
        known = ", ".join(o.id for o in self.outcomes)
        raise ProtocolError(f"unknown outcome '{outcome_id}'; the protocol has: {known}")

    def subset(self, site_ids: list[str]) -> Protocol:
        """The same protocol restricted to some sites (for ad-hoc and test runs).

        The other sites are kept as `excluded_sites`: their areas are still vanguard areas,
        so they never become comparators, and their extracts are skipped, not rejected.
        """
        sites = tuple(self.site(s) for s in site_ids)
        excluded = tuple(s for s in self.sites + self.excluded_sites if s.id not in site_ids)
        return Protocol(**{**self.__dict__, "sites": sites, "excluded_sites": excluded})


def _schema() -> dict[str, Any]:
    text = resources.files("transforms").joinpath("protocol_schema.json").read_text()
    return json.loads(text)


def _error_path(error: jsonschema.ValidationError) -> str:
    parts: list[str] = []
    for part in error.absolute_path:
        parts.append(f"[{part}]" if isinstance(part, int) else f".{part}")
    return "".join(parts).lstrip(".") or "(top level)"


def _describe(error: jsonschema.ValidationError) -> str:
    """One sentence naming the key, what is wrong, and what is allowed."""
    where = _error_path(error)
    schema = error.schema if isinstance(error.schema, dict) else {}
    if error.validator == "enum":
        allowed = ", ".join(json.dumps(v) for v in schema["enum"])
        return f"{where}: {error.instance!r} is not allowed; allowed values: {allowed}"
    if error.validator == "additionalProperties":
        allowed = ", ".join(sorted(schema.get("properties", {})))
        return f"{where}: {error.message}; allowed keys: {allowed}"
    if error.validator == "required":
        return f"{where}: {error.message}"
    if error.validator == "pattern":
        return f"{where}: {error.instance!r} does not match the required format {schema['pattern']}"
    return f"{where}: {error.message}"


def validate_document(doc: dict[str, Any], source: str = "protocol") -> None:
    """Check a parsed protocol against the schema and the rules between its parts."""
    validator = jsonschema.Draft202012Validator(_schema())
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = "\n  ".join(_describe(e) for e in errors)
        raise ProtocolError(f"{source} breaks the protocol schema:\n  {lines}")
    _check_cross_rules(doc, source)


def _check_cross_rules(doc: dict[str, Any], source: str) -> None:
    start = parse_month(doc["study"]["start"])
    end = parse_month(doc["study"]["end"])
    pre = doc["study"]["pre_period_months"]
    problems: list[str] = []
    if start >= end:
        problems.append(f"study.start {doc['study']['start']} must be before study.end")
    outcome_ids = [o["id"] for o in doc["outcomes"]]
    if len(set(outcome_ids)) != len(outcome_ids):
        problems.append(f"outcomes: ids must be unique, got {outcome_ids}")
    if sum(bool(o.get("primary")) for o in doc["outcomes"]) > 1:
        problems.append("outcomes: at most one outcome may be primary")
    if doc["comparison"]["matching_outcome"] not in outcome_ids:
        problems.append(
            f"comparison.matching_outcome: {doc['comparison']['matching_outcome']!r} is not "
            f"an outcome id; allowed values: {', '.join(outcome_ids)}"
        )
    comparison = doc["comparison"]
    if comparison.get("method") == "propensity" and "metric" in comparison:
        problems.append(
            "comparison.metric: applies only to method = \"nearest\"; propensity matching "
            "measures distance in standard deviations of the score's logit, so remove it")
    seen_ids: set[str] = set()
    owner: dict[str, str] = {}
    for i, site in enumerate(doc["sites"]):
        key = f"sites[{i}]"
        if site["id"] in seen_ids:
            problems.append(f"{key}.id: duplicate site id {site['id']!r}")
        seen_ids.add(site["id"])
        go_live = parse_month(site["go_live"])
        if go_live < add_months(start, pre) or go_live > end:
            problems.append(
                f"{key}.go_live: {site['go_live']} must leave {pre} pre-period months after "
                f"study.start and fall on or before study.end ({doc['study']['end']})"
            )
        for area in site["areas"]:
            if area in owner:
                problems.append(f"{key}.areas: {area} already belongs to site {owner[area]!r}")
            owner[area] = site["id"]
    problems.extend(_claim_problems(doc, outcome_ids, owner))
    if problems:
        raise ProtocolError(f"{source} is inconsistent:\n  " + "\n  ".join(problems))


def _claim_problems(doc: dict[str, Any], outcome_ids: list[str],
                    owner: dict[str, str]) -> list[str]:
    """A claim must name a site and an outcome of the protocol; cohort comparators must not
    be vanguard areas."""
    claims = doc.get("claims", {})
    problems = []
    site_ids = [s["id"] for s in doc["sites"]]
    for i, claim in enumerate(claims.get("sites", [])):
        key = f"claims.sites[{i}]"
        if claim["site"] not in site_ids:
            problems.append(f"{key}.site: {claim['site']!r} is not a site id")
        if claim["outcome"] not in outcome_ids:
            problems.append(f"{key}.outcome: {claim['outcome']!r} is not an outcome id; "
                            f"allowed values: {', '.join(outcome_ids)}")
    for area in claims.get("cohort", {}).get("comparison_areas", []):
        if area in owner:
            problems.append(f"claims.cohort.comparison_areas: {area} belongs to site "
                            f"{owner[area]!r}; comparators must be non-vanguard areas")
    return problems


def _build_claims(doc: dict[str, Any]) -> Claims:
    cohort = doc.get("cohort", {})
    defaults = ClaimCohort()
    return Claims(
        cohort=ClaimCohort(
            top_pct=float(cohort.get("top_pct", defaults.top_pct)),
            baseline_months=cohort.get("baseline_months", defaults.baseline_months),
            follow_up_months=cohort.get("follow_up_months", defaults.follow_up_months),
            weights=tuple({**dict(defaults.weights), **cohort.get("weights", {})}.items()),
            comparison_areas=tuple(cohort.get("comparison_areas", ())),
        ),
        sites=tuple(Claim(**{**c, "claimed_pct": float(c["claimed_pct"])})
                    for c in doc.get("sites", [])),
    )


def _build(doc: dict[str, Any], digest: str) -> Protocol:
    study = doc["study"]
    comparison = doc["comparison"]
    return Protocol(
        name=study["name"],
        start=parse_month(study["start"]),
        end=parse_month(study["end"]),
        pre_period_months=study["pre_period_months"],
        outcomes=tuple(Outcome(**o) for o in doc["outcomes"]),
        comparison=Comparison(
            pool=comparison["pool"],
            matches_per_area=comparison["matches_per_area"],
            match_on=tuple(comparison["match_on"]),
            matching_outcome=comparison["matching_outcome"],
            metric=comparison.get("metric", "standardised"),
            caliper=comparison.get("caliper"),
            replacement=comparison.get("replacement", True),
            method=comparison.get("method", "nearest"),
            synthetic_control=comparison.get("synthetic_control", False),
        ),
        estimator=doc["estimator"]["model"],
        alpha=doc["estimator"].get("alpha", 0.05),
        inference=doc["inference"]["method"],
        cluster=doc["inference"].get("cluster", "area"),
        placebo_donors=doc["inference"].get("placebo_donors", 40),
        seed=doc["inference"].get("seed", 0),
        sites=tuple(
            Site(
                id=s["id"],
                name=s["name"],
                model_type=s["model_type"],
                go_live=parse_month(s["go_live"]),
                areas=tuple(s["areas"]),
                announced=date.fromisoformat(s["announced"]) if "announced" in s else None,
                nhse_vanguard_number=s.get("nhse_vanguard_number"),
                patient_level=s.get("patient_level", False),
            )
            for s in doc["sites"]
        ),
        sha256=digest,
        claims=_build_claims(doc.get("claims", {})),
    )


def parse_protocol(text: str, source: str = "protocol") -> Protocol:
    """Parse and validate protocol TOML text."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProtocolError(f"{source} is not valid TOML: {exc}") from exc
    validate_document(doc, source)
    return _build(doc, hashlib.sha256(text.encode()).hexdigest())


def load_protocol(path: str | Path) -> Protocol:
    """Read, validate and return the protocol at `path`."""
    path = Path(path)
    if not path.is_file():
        raise ProtocolError(f"protocol file {path} does not exist")
    return parse_protocol(path.read_text(encoding="utf-8"), source=str(path))


def default_protocol_path() -> Path:
    """The demo protocol shipped at the project root."""
    return Path(__file__).resolve().parent.parent / "evaluation.toml"
