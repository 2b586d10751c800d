"""The verdict table and the final-status decision, with hand-built opinions and no compile.

One test per line of DESIGN.md's table (backprop vs autodiff, autodiff vs finite differences),
then the rows beyond it (non-finite, kink, inconclusive, two-way), and the order in which a
leaf's final status is decided: probe codes → joint kinks → rounding → declared expectations.
Nothing here runs JAX: every test takes milliseconds.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import jaxcheck as jc
from jaxcheck._engine.verdict import classify as vd
from jaxcheck._engine.verdict.classify import Opinions, Status, Tolerance
from jaxcheck._engine.verdict.evidence import Evidence
from jaxcheck._engine.verdict.sentences import leaf_report
from jaxcheck._engine.verdict.status import (
    JointKinks,
    LeafRecord,
    check_expected,
    decide,
    leaf_status,
)


def _opinions(bp, ad, fd, *, error=1e-10, kink=False, up=None, down=None) -> Opinions:
    bp, ad, fd = (np.atleast_1d(np.asarray(x, np.float64)) for x in (bp, ad, fd))
    n = bp.size
    err = np.full(n, error)
    return Opinions(
        backprop=bp,
        autodiff=ad,
        finite=fd,
        slope_up=fd if up is None else np.atleast_1d(np.asarray(up, float)),
        slope_down=fd if down is None else np.atleast_1d(np.asarray(down, float)),
        error=err,
        rounding=err.copy(),
        slope_error=4 * err,
        kink=np.full(n, kink),
    )


def _tol(scale: float = 1.0, rtol: float = 1e-7) -> Tolerance:
    return Tolerance(rtol=rtol, atol=1e-12, fd_rtol=vd.FD_RTOL, fd_atol=1e-14, scale=scale)


def _status(op: Opinions, *, autodiff: bool = True) -> Status:
    return vd.STATUS_OF[int(vd.classify(op, _tol(), autodiff=autodiff)[0])]


# --------------------------------------------------------------------- DESIGN.md's table


def test_agree_agree_is_ok():
    assert _status(_opinions(1.0, 1.0, 1.0 + 1e-11)) == Status.OK


def test_differ_agree_blames_backprop():
    assert _status(_opinions(2.0, 1.0, 1.0)) == Status.BACKPROP


def test_agree_differ_is_fd_unreliable_not_a_bug():
    status = _status(_opinions(1.0, 1.0, 1.5))
    assert status == Status.FD_UNRELIABLE and status.passes


def test_differ_differ_with_backprop_near_fd_blames_the_twin():
    status = _status(_opinions(2.0, 1.0, 2.0))
    assert status == Status.TWIN and status.passes


# ------------------------------------------------------------------------- beyond the table


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_backprop_where_autodiff_is_finite_is_wrong(bad):
    assert _status(_opinions(bad, 1.0, 1.0)) == Status.BACKPROP


def test_a_subgradient_between_the_one_sided_slopes_at_a_kink_passes():
    op = _opinions(0.5, 1.0, 0.5, kink=True, up=1.0, down=0.0)
    assert _status(op) == Status.KINK


def test_a_value_outside_both_one_sided_slopes_at_a_kink_is_wrong():
    op = _opinions(3.0, 1.0, 0.5, kink=True, up=1.0, down=0.0)
    assert _status(op) == Status.BACKPROP


def test_imprecise_finite_differences_between_two_disagreeing_opinions_are_inconclusive():
    status = _status(_opinions(2.0, 1.0, 1.5, error=1.0))
    assert status == Status.INCONCLUSIVE and not status.passes


def test_precise_finite_differences_decide_where_all_three_are_apart():
    # fd sits far closer to autodiff than to backprop: backprop is wrong.
    assert _status(_opinions(2.0, 1.0, 1.01, error=1e-6)) == Status.BACKPROP


def test_two_way_judges_backprop_against_finite_differences_alone():
    assert _status(_opinions(1.0, np.nan, 1.0), autodiff=False) == Status.OK
    assert _status(_opinions(2.0, np.nan, 1.0), autodiff=False) == Status.BACKPROP


def test_entries_decide_blame_and_directions_speak_for_the_twin():
    ok, twin = np.array([vd.OK, vd.OK], np.int8), np.array([vd.OK, vd.TWIN], np.int8)
    assert leaf_status(ok, None) == Status.OK
    assert leaf_status(ok, twin) == Status.TWIN
    wrong = np.array([vd.OK, vd.BACKPROP], np.int8)
    assert leaf_status(wrong, twin) == Status.BACKPROP
    # A direction never blames backprop by itself.
    assert leaf_status(ok, np.array([vd.BACKPROP], np.int8)) == Status.OK


def test_the_status_codes_follow_the_enum_and_declared_passes():
    assert [vd.STATUS_OF[c] for c in range(len(Status))] == list(Status)
    assert Status.DECLARED.passes and not Status.BACKPROP.passes
    assert Status.BACKPROP.rank < Status.DECLARED.rank < Status.OK.rank


def test_one_rounding_formula():
    up, down, h = np.array([3.0, -1.0]), np.array([2.0, -4.0]), np.array([0.1, 0.2])
    expected = vd.ROUNDING_SAFETY * vd.U64 * np.array([3.0, 4.0]) / h
    np.testing.assert_array_equal(vd.rounding_error(up, down, h), expected)
    assert vd.rounding(2.0, 1.0) == vd.ROUNDING_SAFETY * vd.U64 * 2.0


def test_excess_is_the_distance_beyond_the_tolerance():
    assert vd.excess(1.0, 1.0, 1e-7, 0.0) < 0
    assert vd.excess(2.0, 1.0, 0.0, 0.5) == pytest.approx(0.5)
    assert vd.close(np.array([2.0]), np.array([1.0]), 0.0, 0.5)[0] == (
        vd.excess(2.0, 1.0, 0.0, 0.5) <= 0
    )


# ------------------------------------------------------- the order of the final decision


def _record(codes, *, bp=(1.0, 1.0), ad=(1.0, 1.0), joint=None) -> LeafRecord:
    bp = np.asarray(bp, np.float64)
    return LeafRecord(
        path="W",
        theta=np.zeros(bp.size),
        backprop=bp,
        autodiff=None if ad is None else np.asarray(ad, np.float64),
        tolerance=_tol(),
        evidence=Evidence(np.zeros(0, np.int64), None, np.zeros(0, bool)),
        classes=np.asarray(codes, np.int8),
        joint=joint,
    )


def _never() -> None:
    raise AssertionError("the wider re-run is asked for only when a leaf fails")


def test_probe_codes_alone_decide_a_passing_leaf_without_a_rerun():
    decision = decide(_record([vd.OK, vd.KINK]), wider=_never)
    assert decision.status == Status.KINK and decision.found == Status.KINK


def test_joint_kinks_turn_accepted_subgradients_into_backprop_without_touching_the_record():
    record = _record([vd.KINK, vd.KINK], joint=JointKinks(9, 2, np.array([0, 1])))
    decision = decide(record)
    assert decision.status == Status.BACKPROP
    assert list(decision.classes) == [vd.BACKPROP, vd.BACKPROP]
    assert list(record.classes) == [vd.KINK, vd.KINK]


def test_a_joint_test_that_passed_leaves_the_kinks_alone():
    decision = decide(_record([vd.KINK, vd.KINK], joint=JointKinks(9, 0, np.zeros(0, int))))
    assert decision.status == Status.KINK


def test_rounding_comes_after_the_joint_kink_test():
    record = _record(
        [vd.KINK, vd.KINK],
        bp=(1.0 + 1e-5, 1.0),
        joint=JointKinks(9, 1, np.array([0, 1])),
    )
    decision = decide(record, wider=lambda: np.array([1.0, 1.0]))
    assert decision.status == Status.ROUNDING
    assert decision.rounding_difference == pytest.approx(
        vd.relative_difference(record.backprop, record.autodiff)
    )


def test_a_wider_rerun_that_still_disagrees_keeps_the_blame():
    record = _record([vd.BACKPROP, vd.OK], bp=(2.0, 1.0))
    decision = decide(record, wider=lambda: np.array([2.0, 1.0]))
    assert decision.status == Status.BACKPROP and decision.rounding_difference is None


def test_a_non_finite_backprop_is_never_rounding():
    record = _record([vd.BACKPROP, vd.OK], bp=(np.nan, 1.0))
    assert decide(record, wider=lambda: np.array([1.0, 1.0])).status == Status.BACKPROP


def test_two_way_leaves_have_no_rounding_opinion():
    record = _record([vd.BACKPROP, vd.OK], bp=(2.0, 1.0), ad=None)
    assert decide(record, wider=_never).status == Status.BACKPROP


def test_declared_comes_last_and_keeps_what_was_found():
    record = _record([vd.BACKPROP, vd.OK], bp=(2.0, 1.0))
    decision = decide(record, wider=lambda: None, expected="surrogate")
    assert decision.status == Status.DECLARED and decision.status.passes
    assert decision.found == Status.BACKPROP and decision.expected == "surrogate"


def test_declared_does_not_hide_that_rounding_explains_the_difference():
    record = _record([vd.BACKPROP, vd.OK], bp=(1.0 + 1e-5, 1.0))
    decision = decide(record, wider=lambda: np.array([1.0, 1.0]), expected="surrogate")
    assert decision.status == Status.ROUNDING


def test_declared_covers_an_inconclusive_leaf_and_leaves_a_passing_one_alone():
    inconclusive = decide(_record([vd.INCONCLUSIVE, vd.OK]), expected="surrogate")
    assert inconclusive.status == Status.DECLARED
    assert inconclusive.found == Status.INCONCLUSIVE
    ok = decide(_record([vd.OK, vd.OK]), expected="surrogate")
    assert ok.status == Status.OK and ok.expected == "surrogate"


def test_a_derivative_expectation_changes_nothing():
    decision = decide(_record([vd.BACKPROP, vd.OK], bp=(2.0, 1.0)), expected="derivative")
    assert decision.status == Status.BACKPROP


def test_a_declared_leaf_reports_its_difference_factor_and_declaration():
    bp, ad = np.array([3.0, -6.0]), np.array([1.0, -2.0])
    record = _record([vd.BACKPROP, vd.BACKPROP], bp=bp, ad=ad)
    record.evidence = Evidence(np.arange(2), _opinions(bp, ad, ad), np.ones(2, bool))
    leaf = leaf_report(record, decide(record, expected="surrogate"), "full")
    assert leaf.ok and leaf.status == "declared" and leaf.found == "backprop"
    assert leaf.factor == pytest.approx(3.0) and leaf.wrong == 2
    assert "declared" in leaf.message and "3.00×" in leaf.message
    out = json.loads(json.dumps(leaf.to_dict()))
    assert out["status"] == "declared" and out["found"] == "backprop"
    assert out["expected"] == "surrogate"


def test_expected_must_name_leaves_and_known_expectations():
    assert check_expected(None, ["W", "b"]) == {}
    assert check_expected({"W": "surrogate"}, ["W", "b"]) == {"W": "surrogate"}
    with pytest.raises(jc.InputError, match=r"'w'.*not a leaf.*'W', 'b'"):
        check_expected({"w": "surrogate"}, ["W", "b"])
    with pytest.raises(jc.InputError, match="surrogate"):
        check_expected({"W": "approximate"}, ["W", "b"])


def test_expected_is_validated_as_an_option():
    from jaxcheck._engine.options import Options

    assert Options(expected={"b": "surrogate", "W": "surrogate"}).expectations == {
        "W": "surrogate",
        "b": "surrogate",
    }
    with pytest.raises(jc.InputError, match="expected="):
        Options(expected=["W"])
