from datetime import date

import polars as pl

from reports.render import _environment, render_site
from reports.wording import evidence_rating, headline


def test_headline_reads_as_a_sentence():
    text = headline("Emergency admissions", -4.2, -9.1, 1.2, p_value=0.12)
    assert text == (
        "Emergency admissions were 4% lower (95% CI 9% lower to 1% higher) than in matched "
        "comparison areas; the difference is not statistically significant."
    )
    assert "is statistically significant" in headline("A&E attendances", 5, 2, 8, 0.001)
    assert "0.3% lower" in headline("Bed days", -0.3, -1.0, 0.4, 0.5)


def test_evidence_rating_never_outruns_the_design():
    assert evidence_rating(0.2, 10) == "No clear effect"
    assert evidence_rating(0.001, 1) == "Suggestive (few treated areas)"
    assert evidence_rating(0.001, 8) == "Clear effect"


def test_untrusted_text_is_escaped():
    site = {"site_id": "x", "name": "<script>alert(1)</script>", "model_type": "PACS",
            "go_live": date(2015, 3, 1), "areas": ["A001"]}
    empty = pl.DataFrame({"site_id": [], "outcome": []}, schema={"site_id": pl.String,
                                                                  "outcome": pl.String})
    files = pl.DataFrame({"source_id": ["x"], "file": ["=HYPERLINK(\"<b>\")"],
                          "extract_date": [None], "kind": ["aggregate"], "status": ["loaded"],
                          "message": [""]})
    data = {"results": empty, "series": empty, "comparators": empty, "files": files}
    page = render_site(_environment(), data, site, {"run_id": "r", "code_version": "v",
                                                    "protocol_sha256": "p", "data_sha256": "d",
                                                    "generated_at": "now"})
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;b&gt;" in page
