from datetime import date

import pytest

from tests.conftest import ROOT, SHARED_REFERENCE
from transforms.protocol import ProtocolError, parse_protocol


def _text() -> str:
    return (ROOT / "evaluation.toml").read_text()


def test_demo_protocol_uses_real_first_wave_vanguards(protocol):
    import csv

    with open(SHARED_REFERENCE / "vanguard_sites_2015.csv", newline="") as handle:
        real = {int(r["nhse_vanguard_number"]): r for r in csv.DictReader(handle)}
    numbered = [s for s in protocol.sites if s.nhse_vanguard_number]
    assert len(numbered) == 29
    counts = {t: sum(s.model_type == t for s in numbered) for t in ("PACS", "MCP", "care-home")}
    assert counts == {"PACS": 9, "MCP": 14, "care-home": 6}
    for site in numbered:
        row = real[site.nhse_vanguard_number]
        assert site.announced == date.fromisoformat(row["announced"])
        assert site.name.split(" ")[0] == row["vanguard_name"].strip('"').split(" ")[0]
    assert protocol.months[0] == date(2012, 4, 1) and len(protocol.months) == 84
    assert {s.go_live for s in protocol.sites} == {
        date(2015, 3, 1), date(2015, 9, 1), date(2016, 9, 1)
    }


def test_unknown_model_type_names_key_and_allowed_values():
    text = _text().replace('model_type = "MCP"', 'model_type = "ACO"', 1)
    with pytest.raises(ProtocolError) as err:
        parse_protocol(text)
    message = str(err.value)
    assert "sites[9].model_type" in message
    assert "'ACO'" in message and '"PACS", "MCP", "care-home"' in message


def test_misspelt_key_lists_allowed_keys():
    text = _text().replace("matches_per_area =", "matches_per_aera =")
    with pytest.raises(ProtocolError) as err:
        parse_protocol(text)
    assert "'matches_per_aera' was unexpected" in str(err.value)
    assert "allowed keys: caliper, match_on, matches_per_area" in str(err.value)


def test_bad_month_format():
    text = _text().replace('end = "2019-03"', 'end = "2019-13"')
    with pytest.raises(ProtocolError, match=r"study.end: '2019-13' does not match"):
        parse_protocol(text)


def test_area_in_two_sites_is_rejected():
    text = _text().replace('areas = ["A002", "A003"]', 'areas = ["A002", "A001"]')
    with pytest.raises(ProtocolError, match=r"A001 already belongs to site 'wirral'"):
        parse_protocol(text)


def test_go_live_without_enough_pre_period():
    text = _text().replace('go_live = "2016-09"', 'go_live = "2013-01"')
    with pytest.raises(ProtocolError, match=r"go_live: 2013-01 must leave 24 pre-period months"):
        parse_protocol(text)


def test_matching_outcome_must_be_an_outcome():
    text = _text().replace('matching_outcome = "emergency_admissions"',
                           'matching_outcome = "deaths"')
    with pytest.raises(ProtocolError, match="allowed values: emergency_admissions"):
        parse_protocol(text)


def test_invalid_toml_is_reported():
    with pytest.raises(ProtocolError, match="not valid TOML"):
        parse_protocol("[study\nname=1")


def test_subset_and_hash(protocol):
    small = protocol.subset(["dudley", "calderdale"])
    assert [s.id for s in small.sites] == ["dudley", "calderdale"]
    assert small.sha256 == protocol.sha256 and len(protocol.sha256) == 64
    with pytest.raises(ProtocolError, match="unknown site 'nowhere'"):
        protocol.subset(["nowhere"])


def test_comparison_defaults_to_nearest_neighbours_without_synthetic_control(protocol):
    assert protocol.comparison.method == "nearest"
    assert protocol.comparison.synthetic_control is False
    bare = _text().replace('method = "nearest"', "").replace("synthetic_control = false", "")
    parsed = parse_protocol(bare).comparison
    assert parsed.method == "nearest" and parsed.synthetic_control is False


def test_propensity_matching_and_synthetic_control_switches_are_read():
    text = (_text().replace('method = "nearest"', 'method = "propensity"\ncaliper = 0.2')
            .replace("synthetic_control = false", "synthetic_control = true"))
    comparison = parse_protocol(text).comparison
    assert comparison.method == "propensity" and comparison.caliper == 0.2
    assert comparison.synthetic_control is True


def test_unknown_matching_method_names_key_and_allowed_values():
    text = _text().replace('method = "nearest"', 'method = "genetic"')
    with pytest.raises(ProtocolError) as err:
        parse_protocol(text)
    assert ("comparison.method: 'genetic' is not allowed; allowed values: \"nearest\", "
            "\"propensity\"") in str(err.value)


def test_unknown_matching_feature_names_key_and_allowed_values():
    text = _text().replace('match_on = ["pre_rate", "log_population"]',
                           'match_on = ["pre_rate", "age"]')
    with pytest.raises(ProtocolError) as err:
        parse_protocol(text)
    message = str(err.value)
    assert "comparison.match_on[1]: 'age' is not allowed" in message
    assert '"pre_rate", "log_population", "pre_trend", "pct_aged_65_plus", "imd_score"' in message


def test_synthetic_control_switch_must_be_a_boolean():
    text = _text().replace("synthetic_control = false", 'synthetic_control = "yes"')
    with pytest.raises(ProtocolError, match=r"comparison.synthetic_control: 'yes' is not of "
                                            r"type 'boolean'"):
        parse_protocol(text)


def test_metric_with_propensity_matching_is_rejected():
    text = _text().replace('method = "nearest"',
                           'method = "propensity"\nmetric = "mahalanobis"')
    with pytest.raises(ProtocolError, match=r"comparison.metric: applies only to method"):
        parse_protocol(text)
