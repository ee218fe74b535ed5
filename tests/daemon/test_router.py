"""Route matching: routes built through the real config path, real pydicom datasets."""

from __future__ import annotations

import textwrap

import pydicom
import pytest

from pacsguard.daemon.config import load_config_text
from pacsguard.daemon.item import TransportFacts
from pacsguard.daemon.plugins import collect, get_plugin_manager
from pacsguard.daemon.router import compile_route, select_routes

DESTS = "destinations:\n  a: {type: folder, path: /tmp/pg-a}\n  b: {type: folder, path: /tmp/pg-b}\n"

NETWORK = TransportFacts(source="dicom", source_type="dicom", calling_ae="CT_SCANNER",
                         called_ae="PACSGUARD", calling_host="10.1.2.3")
FOLDER = TransportFacts(source="modality-drop", source_type="folder")


@pytest.fixture(scope="module")
def registry():
    return collect(get_plugin_manager())


def build(registry, routes_yaml: str):
    """Routes from a YAML ``routes:`` list, through load_config_text and compile_route."""
    text = DESTS + "routes:\n" + textwrap.indent(textwrap.dedent(routes_yaml), "  ")
    loaded = load_config_text(text, registry)
    return [compile_route(cfg, stages=[]) for cfg in loaded.config.routes]


def fired(registry, routes_yaml, header, facts=NETWORK) -> list[str]:
    return [r.name for r in select_routes(build(registry, routes_yaml), header, facts)]


def matches(registry, match: str, header, facts=NETWORK) -> bool:
    """Does a single route with ``match: <match>`` (a YAML flow mapping) fire?"""
    names = fired(registry, f"- name: only\n  match: {match}\n  to: [a]\n", header, facts)
    assert names in ([], ["only"])
    return names == ["only"]


def ct() -> pydicom.Dataset:
    ds = pydicom.Dataset()
    ds.Modality = "CT"
    ds.StudyDescription = "Research CT HEAD"
    ds.InstitutionName = "General Hospital"
    ds.SliceThickness = "2.5"
    ds.SeriesNumber = 3
    ds.StudyDate = "20240101"
    ds.PatientName = "DOE^JOHN"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    return ds


# --- single conditions -----------------------------------------------------------------


@pytest.mark.parametrize("match, expected", [
    # scalar equals
    ("{Modality: CT}", True),
    ("{Modality: MR}", False),
    ("{PatientName: 'DOE^JOHN'}", True),
    ("{SeriesNumber: 3}", True),
    ("{SeriesNumber: 4}", False),
    ("{SliceThickness: 2.5}", True),
    ("{SliceThickness: 2.4}", False),
    # list: any of
    ("{Modality: [MR, CT, PT]}", True),
    ("{Modality: [MR, PT]}", False),
    ("{SeriesNumber: [1, 3]}", True),
    # regex: searched, not anchored
    ("{StudyDescription: {regex: 'CT HE'}}", True),
    ("{StudyDescription: {regex: '(?i)research'}}", True),
    ("{StudyDescription: {regex: '^CT'}}", False),
    ("{StudyDescription: {regex: 'research'}}", False),
    # not
    ("{Modality: {not: MR}}", True),
    ("{Modality: {not: CT}}", False),
    ("{Modality: {not: [MR, CT]}}", False),
    ("{Modality: {not: [MR, PT]}}", True),
    ("{InstitutionName: {not: {regex: 'Hospital$'}}}", False),
    ("{InstitutionName: {not: {regex: 'Clinic$'}}}", True),
    # exists
    ("{Modality: {exists: true}}", True),
    ("{Modality: {exists: false}}", False),
    ("{BodyPartExamined: {exists: true}}", False),
    ("{BodyPartExamined: {exists: false}}", True),
])
def test_condition(registry, match, expected):
    assert matches(registry, match, ct()) is expected


@pytest.mark.parametrize("match, expected", [
    ("{SliceThickness: {lt: 3}}", True),
    ("{SliceThickness: {le: 3}}", True),
    ("{SliceThickness: {gt: 3}}", False),
    ("{SliceThickness: {ge: 3}}", False),
    ("{SliceThickness: {lt: 2.5}}", False),
    ("{SliceThickness: {le: 2.5}}", True),
    ("{SliceThickness: {gt: 2.5}}", False),
    ("{SliceThickness: {ge: 2.5}}", True),
    ("{SliceThickness: {gt: 2}}", True),
    ("{SeriesNumber: {ge: 3}}", True),
    ("{SeriesNumber: {gt: 3}}", False),
])
def test_numeric_comparisons(registry, match, expected):
    assert matches(registry, match, ct()) is expected


def test_numeric_comparison_is_not_textual(registry):
    ds = ct()
    ds.SliceThickness = "10"  # as text "10" < "3"; as a number it is not
    assert matches(registry, "{SliceThickness: {lt: 3}}", ds) is False
    assert matches(registry, "{SliceThickness: {gt: 3}}", ds) is True


@pytest.mark.parametrize("match, expected", [
    ("{StudyDate: {ge: '20230101'}}", True),
    ("{StudyDate: {gt: '20231231'}}", True),
    ("{StudyDate: {lt: '20230101'}}", False),
    ("{StudyDate: {le: '20240101'}}", True),
    ("{StudyDate: {lt: '20240101'}}", False),
    ("{StudyDate: {ge: '20240102'}}", False),
    ("{PatientName: {ge: D, lt: E}}", True),  # plain text compares as text
    ("{PatientName: {lt: D}}", False),
])
def test_string_and_date_comparisons(registry, match, expected):
    assert matches(registry, match, ct()) is expected


@pytest.mark.parametrize("match, expected", [
    ("{SliceThickness: {ge: 2, lt: 3}}", True),
    ("{SliceThickness: {ge: 2, lt: 2.5}}", False),
    ("{SliceThickness: {ge: 2.6, lt: 5}}", False),
    ("{StudyDescription: {regex: CT, not: 'Research CT HEAD'}}", False),
    ("{StudyDescription: {regex: CT, not: 'Other'}}", True),
    ("{Modality: {exists: true, regex: 'T$'}}", True),
    ("{Modality: {exists: false, regex: 'T$'}}", False),
])
def test_all_operators_in_one_mapping_must_hold(registry, match, expected):
    assert matches(registry, match, ct()) is expected


@pytest.mark.parametrize("match, expected", [
    ("{Modality: CT, SliceThickness: {lt: 3}, SeriesNumber: 3}", True),
    ("{Modality: CT, SliceThickness: {gt: 3}}", False),
    ("{Modality: MR, SliceThickness: {lt: 3}}", False),
    ("{Modality: CT, calling_ae: OTHER_AE}", False),
    ("{Modality: CT, calling_ae: CT_SCANNER}", True),
])
def test_all_keys_must_hold(registry, match, expected):
    assert matches(registry, match, ct()) is expected


# --- missing attributes ----------------------------------------------------------------


@pytest.mark.parametrize("condition", [
    "CHEST", "[CHEST, HEAD]", "''", "{regex: ''}", "{regex: '.*'}", "{not: CHEST}", "{not: [CHEST]}",
    "{not: {regex: X}}", "{not: {exists: true}}", "{exists: true}", "{lt: 3}", "{le: 3}", "{gt: 3}",
    "{ge: 3}", "{ge: ''}",
])
def test_condition_on_missing_attribute_is_false(registry, condition):
    ds = ct()
    assert "BodyPartExamined" not in ds
    assert matches(registry, "{BodyPartExamined: %s}" % condition, ds) is False
    ds.BodyPartExamined = "HEAD"  # the same route can fire once the attribute is there
    assert matches(registry, "{Modality: CT}", ds) is True


def test_only_exists_false_holds_for_missing_attribute(registry):
    assert matches(registry, "{BodyPartExamined: {exists: false}}", ct()) is True
    ds = ct()
    ds.BodyPartExamined = "HEAD"
    assert matches(registry, "{BodyPartExamined: {exists: false}}", ds) is False
    assert matches(registry, "{BodyPartExamined: {not: CHEST}}", ds) is True


def test_missing_attribute_fails_the_whole_route(registry):
    assert matches(registry, "{Modality: CT, BodyPartExamined: {not: CHEST}}", ct()) is False


def test_missing_transport_fact_is_false(registry):
    assert FOLDER.calling_ae is None
    assert matches(registry, "{calling_ae: {not: CT_SCANNER}}", ct(), FOLDER) is False
    assert matches(registry, "{calling_ae: {regex: '.*'}}", ct(), FOLDER) is False
    assert matches(registry, "{calling_ae: {exists: false}}", ct(), FOLDER) is True
    assert matches(registry, "{calling_ae: {exists: false}}", ct(), NETWORK) is False


# --- multi-valued attributes -------------------------------------------------------------


@pytest.mark.parametrize("match, expected", [
    ("{ImageType: AXIAL}", True),
    ("{ImageType: ORIGINAL}", True),
    ("{ImageType: LOCALIZER}", False),
    ("{ImageType: [LOCALIZER, DERIVED]}", False),
    ("{ImageType: [LOCALIZER, PRIMARY]}", True),
    ("{ImageType: 'ORIGINAL\\PRIMARY\\AXIAL'}", True),
    ("{ImageType: {regex: '^AXIAL$'}}", True),
    ("{ImageType: {regex: '^ORIGINAL\\\\PRIMARY\\\\AXIAL$'}}", True),
    ("{ImageType: {regex: 'PRIMARY\\\\AXIAL'}}", True),
    ("{ImageType: {regex: 'AXIAL\\\\PRIMARY'}}", False),
    ("{ImageType: {not: LOCALIZER}}", True),
    ("{ImageType: {exists: true}}", True),
])
def test_multi_valued_attribute(registry, match, expected):
    ds = ct()
    assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"] and ds["ImageType"].VM == 3
    assert matches(registry, match, ds) is expected


def test_multi_valued_numbers_compare_each_value(registry):
    ds = ct()
    ds.PixelSpacing = ["0.5", "4.0"]
    assert matches(registry, "{PixelSpacing: {gt: 3}}", ds) is True
    assert matches(registry, "{PixelSpacing: {gt: 5}}", ds) is False
    assert matches(registry, "{PixelSpacing: 0.5}", ds) is True


# --- transport facts ---------------------------------------------------------------------


@pytest.mark.parametrize("match, facts, expected", [
    ("{source: dicom}", NETWORK, True),
    ("{source: modality-drop}", NETWORK, False),
    ("{source: modality-drop}", FOLDER, True),
    ("{source_type: folder}", FOLDER, True),
    ("{calling_ae: CT_SCANNER}", NETWORK, True),
    ("{calling_ae: [MR_SCANNER, CT_SCANNER]}", NETWORK, True),
    ("{calling_ae: MR_SCANNER}", NETWORK, False),
    ("{called_ae: PACSGUARD}", NETWORK, True),
    ("{called_ae: OTHER}", NETWORK, False),
    ("{calling_host: 10.1.2.3}", NETWORK, True),
    ("{calling_host: {regex: '^10\\.1\\.'}}", NETWORK, True),
    ("{calling_host: {regex: '^192\\.168\\.'}}", NETWORK, False),
    ("{calling_host: 10.1.2.3}", FOLDER, False),
])
def test_transport_facts(registry, match, facts, expected):
    assert matches(registry, match, ct(), facts) is expected


# --- evaluation order --------------------------------------------------------------------

FOUR_ROUTES = """\
- name: ct
  match: {Modality: CT}
  to: [a]
- name: mr
  match: {Modality: MR}
  to: [b]
- name: thin
  match: {SliceThickness: {lt: 3}}
  to: [b]
- name: all
  match: {}
  to: [a, b]
"""


def test_every_matching_route_fires_top_to_bottom(registry):
    routes = build(registry, FOUR_ROUTES)
    selected = select_routes(routes, ct(), NETWORK)
    assert [r.name for r in selected] == ["ct", "thin", "all"]
    assert [r.to for r in selected] == [["a"], ["b"], ["a", "b"]]
    mr = ct()
    mr.Modality = "MR"
    mr.SliceThickness = "5"
    assert [r.name for r in select_routes(routes, mr, NETWORK)] == ["mr", "all"]


def test_final_stops_evaluation(registry):
    text = FOUR_ROUTES.replace("  match: {Modality: CT}\n", "  match: {Modality: CT}\n  final: true\n")
    routes = build(registry, text)
    assert [r.final for r in routes] == [True, False, False, False]
    assert [r.name for r in select_routes(routes, ct(), NETWORK)] == ["ct"]
    mr = ct()
    mr.Modality = "MR"  # the final route does not match: evaluation goes on
    assert [r.name for r in select_routes(routes, mr, NETWORK)] == ["mr", "thin", "all"]


def test_final_in_the_middle_keeps_earlier_routes(registry):
    text = FOUR_ROUTES.replace("  match: {SliceThickness: {lt: 3}}\n",
                               "  match: {SliceThickness: {lt: 3}}\n  final: true\n")
    assert fired(registry, text, ct()) == ["ct", "thin"]


def test_no_route_matched_returns_empty_list(registry):
    routes = build(registry, FOUR_ROUTES.split("- name: all")[0])
    us = ct()
    us.Modality = "US"
    us.SliceThickness = "7"
    assert select_routes(routes, us, NETWORK) == []
    assert select_routes([], ct(), NETWORK) == []


def test_empty_match_matches_everything(registry):
    routes = build(registry, "- name: any\n  match: {}\n  to: [a]\n- name: implicit\n  to: [b]\n")
    assert routes[0].conditions == [] and routes[1].conditions == []
    for header, facts in [(ct(), NETWORK), (pydicom.Dataset(), FOLDER)]:
        assert [r.name for r in select_routes(routes, header, facts)] == ["any", "implicit"]


def test_route_conditions_follow_the_match_keys(registry):
    (route,) = build(registry, "- name: r\n  match: {Modality: CT, calling_ae: X, StudyDate: {ge: '2024'}}\n"
                               "  to: [b, a]\n")
    assert [key for key, _ in route.conditions] == ["Modality", "calling_ae", "StudyDate"]
    assert route.to == ["b", "a"] and route.final is False and route.stages == []
