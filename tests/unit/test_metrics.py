"""Detection and continual metrics against numbers worked out by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from forgesweep.metrics import (
    AccuracyMatrix,
    accuracy,
    average_precision,
    binary_metrics,
    equal_error_rate,
    roc_auc,
)

# --------------------------------------------------------------------------------------
# accuracy
# --------------------------------------------------------------------------------------


def test_accuracy_hand_case_and_threshold_boundary():
    # pred (p >= 0.5): 0, 1, 1, 0  vs labels 0, 1, 0, 1 -> 2 of 4 correct
    assert accuracy([0.1, 0.5, 0.7, 0.4], [0, 1, 0, 1]) == pytest.approx(0.5)
    # threshold 0.8: every prediction is "real" -> correct on the two real samples
    assert accuracy([0.1, 0.5, 0.7, 0.4], [0, 1, 0, 1], threshold=0.8) == pytest.approx(0.5)
    assert accuracy([0.9, 0.2], [1, 0]) == 1.0
    assert accuracy(np.array([0.9, 0.2]), np.array([True, False])) == 1.0


def test_accuracy_rejects_out_of_range_probs_and_threshold():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        accuracy([1.2, 0.1], [1, 0])
    with pytest.raises(ValueError, match="threshold"):
        accuracy([0.2, 0.1], [1, 0], threshold=1.5)


# --------------------------------------------------------------------------------------
# ROC AUC
# --------------------------------------------------------------------------------------


def test_auc_no_ties():
    # positives 0.35, 0.8; negatives 0.1, 0.4. Pairs won by the positive:
    # 0.35>0.1 yes, 0.35>0.4 no, 0.8>0.1 yes, 0.8>0.4 yes -> 3/4
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)


def test_auc_with_ties_counts_half():
    # positives 0.5, 0.9; negatives 0.2, 0.5.
    # 0.5 vs 0.2 win 1, 0.5 vs 0.5 tie 0.5, 0.9 vs both win 2 -> 3.5 / 4
    assert roc_auc([0.2, 0.5, 0.5, 0.9], [0, 0, 1, 1]) == pytest.approx(0.875)
    # all scores equal -> every pair is a tie -> 0.5
    assert roc_auc([0.3, 0.3, 0.3, 0.3], [0, 1, 0, 1]) == pytest.approx(0.5)


def test_auc_perfect_and_inverted():
    assert roc_auc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert roc_auc([0.1, 0.2, 0.8, 0.9], [1, 1, 0, 0]) == 0.0


def test_auc_accepts_any_real_scores():
    # logits: same order as the probabilities in test_auc_no_ties
    assert roc_auc([-3.0, 0.5, -0.2, 4.0], [0, 0, 1, 1]) == pytest.approx(0.75)


def test_auc_and_eer_single_class_is_nan():
    assert math.isnan(roc_auc([0.1, 0.9], [1, 1]))
    assert math.isnan(roc_auc([0.1, 0.9], [0, 0]))
    assert math.isnan(equal_error_rate([0.1, 0.9], [0, 0]))


# --------------------------------------------------------------------------------------
# EER
# --------------------------------------------------------------------------------------


def test_eer_at_an_operating_point():
    # negatives 0.1, 0.4; positives 0.35, 0.8. Descending thresholds -> (FPR, FNR):
    # start (0, 1); 0.8 (0, .5); 0.4 (.5, .5) -> FPR == FNR == 0.5
    assert equal_error_rate([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.5)


def test_eer_interpolated_between_points():
    # 2 positives, 3 negatives; scores .9(+) .8(-) .7(+) .6(-) .5(-)
    # (FPR, FNR): (0, 1) (0, 1/2) (1/3, 1/2) (1/3, 0) ...
    # FNR - FPR goes 1/6 -> -1/3 on the vertical segment FPR = 1/3;
    # t = (1/6) / (1/2) = 1/3, FNR = 1/2 - 1/3 * 1/2 = 1/3 = FPR -> EER 1/3
    assert equal_error_rate([0.9, 0.8, 0.7, 0.6, 0.5], [1, 0, 1, 0, 0]) == pytest.approx(1 / 3)


def test_eer_tied_scores_and_perfect_separation():
    # one tie across classes: ROC goes (0, 1) -> (1, 0) in one step; crossing at 0.5
    assert equal_error_rate([0.5, 0.5], [1, 0]) == pytest.approx(0.5)
    assert equal_error_rate([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 0.0
    assert equal_error_rate([0.1, 0.2, 0.8, 0.9], [1, 1, 0, 0]) == 1.0


# --------------------------------------------------------------------------------------
# AP
# --------------------------------------------------------------------------------------


def test_ap_hand_case():
    # descending: .8(+) .4(-) .35(+) .1(-)
    # (R, P): (.5, 1) (.5, 1/2) (1, 2/3) (1, 1/2)
    # AP = .5*1 + 0*.5 + .5*(2/3) + 0 = 0.8333...
    assert average_precision([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(5 / 6)


def test_ap_with_ties_enters_tied_group_together():
    # 3 positives. descending: .8(-) | .6(+,+,-) | .3(+)
    # .8: tp0 fp1 -> R 0,   P 0
    # .6: tp2 fp2 -> R 2/3, P 1/2
    # .3: tp3 fp2 -> R 1,   P 3/5
    # AP = 0 + (2/3)(1/2) + (1/3)(3/5) = 1/3 + 1/5 = 8/15
    scores = [0.8, 0.6, 0.6, 0.6, 0.3]
    labels = [0, 1, 1, 0, 1]
    assert average_precision(scores, labels) == pytest.approx(8 / 15)


def test_ap_edge_cases():
    assert average_precision([0.1, 0.2], [1, 1]) == pytest.approx(1.0)
    assert math.isnan(average_precision([0.1, 0.2], [0, 0]))
    assert average_precision([0.1, 0.2, 0.9], [0, 0, 1]) == pytest.approx(1.0)


def test_against_sklearn_on_random_data_with_ties():
    skm = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for _ in range(5):
        y = rng.integers(0, 2, size=200)
        s = np.round(rng.random(200) * 0.5 + 0.3 * y, 2)  # rounding makes many ties
        assert roc_auc(s, y) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
        assert average_precision(s, y) == pytest.approx(
            skm.average_precision_score(y, s), abs=1e-12
        )
        fpr, tpr, _ = skm.roc_curve(y, s, drop_intermediate=False)
        eer = equal_error_rate(s, y)
        # the EER lies on the ROC polyline: some segment crosses FNR == FPR at eer
        fnr = 1 - tpr
        k = int(np.flatnonzero(fnr - fpr <= 0)[0])
        # the crossing segment of sklearn's ROC brackets the EER in both FPR and FNR
        assert min(fpr[k - 1], fpr[k]) - 1e-12 <= eer <= max(fpr[k - 1], fpr[k]) + 1e-12
        assert min(fnr[k - 1], fnr[k]) - 1e-12 <= eer <= max(fnr[k - 1], fnr[k]) + 1e-12


# --------------------------------------------------------------------------------------
# binary_metrics and validation
# --------------------------------------------------------------------------------------


def test_binary_metrics_keys_and_values():
    out = binary_metrics([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    assert set(out) == {"acc", "auc", "eer", "ap"}
    # acc: preds 0, 0, 0, 1 vs 0, 0, 1, 1 -> 3/4
    assert out["acc"] == pytest.approx(0.75)
    assert out["auc"] == pytest.approx(0.75)
    assert out["eer"] == pytest.approx(0.5)
    assert out["ap"] == pytest.approx(5 / 6)
    assert all(isinstance(v, float) for v in out.values())


@pytest.mark.parametrize("fn", [accuracy, roc_auc, equal_error_rate, average_precision,
                                binary_metrics])
def test_validation_errors(fn):
    with pytest.raises(ValueError, match="mismatch"):
        fn([0.1, 0.2, 0.3], [0, 1])
    with pytest.raises(ValueError, match="empty"):
        fn([], [])
    with pytest.raises(ValueError, match="labels must be 0 or 1.*2"):
        fn([0.1, 0.2], [0, 2])
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        fn([0.1, 0.2], ["0", "1"])
    with pytest.raises(ValueError, match="finite"):
        fn([0.1, float("nan")], [0, 1])
    with pytest.raises(ValueError, match="1-D"):
        fn([[0.1, 0.2]], [0, 1])


# --------------------------------------------------------------------------------------
# AccuracyMatrix
# --------------------------------------------------------------------------------------

# Hand example (lower triangle; rows = after stage i, cols = task j):
#
#            task0  task1  task2
#   stage0   0.80    .      .
#   stage1   0.90   0.95    .
#   stage2   0.60   0.80   0.85
#
# stage 2:
#   average     = (0.60 + 0.80 + 0.85) / 3              = 0.75
#   forgetting  = j=0: max(0.80, 0.90) - 0.60 = 0.30
#                 j=1: max(0.95)       - 0.80 = 0.15     -> mean 0.225
#   BWT         = ((0.60 - 0.80) + (0.80 - 0.95)) / 2    = (-0.20 - 0.15) / 2 = -0.175
#   (forgetting != -BWT because task 0 improved after stage 0 before dropping)
# stage 1:
#   average     = (0.90 + 0.95) / 2                      = 0.925
#   forgetting  = max(0.80) - 0.90                       = -0.10
#   BWT         = 0.90 - 0.80                            = 0.10
# stage 0: average 0.80, forgetting 0.0, BWT 0.0
HAND = [
    [0.80, None, None],
    [0.90, 0.95, None],
    [0.60, 0.80, 0.85],
]


def _hand_matrix() -> AccuracyMatrix:
    m = AccuracyMatrix(3)
    for i, row in enumerate(HAND):
        for j, v in enumerate(row):
            if v is not None:
                m.set(i, j, v)
    return m


def test_matrix_hand_computed_metrics():
    m = _hand_matrix()
    assert m.average(2) == pytest.approx(0.75)
    assert m.forgetting(2) == pytest.approx(0.225)
    assert m.backward_transfer(2) == pytest.approx(-0.175)
    assert m.average(1) == pytest.approx(0.925)
    assert m.forgetting(1) == pytest.approx(-0.10)
    assert m.backward_transfer(1) == pytest.approx(0.10)
    assert m.average(0) == pytest.approx(0.80)
    assert m.forgetting(0) == 0.0
    assert m.backward_transfer(0) == 0.0
    assert m.summary(2) == pytest.approx({"avg_acc": 0.75, "forgetting": 0.225, "bwt": -0.175})


def test_matrix_partial_fill_during_training():
    # after stage 1 the stage-2 row is still empty; stage-1 metrics must work
    m = AccuracyMatrix(3)
    m.set(0, 0, 0.80)
    m.set(1, 0, 0.90)
    m.set(1, 1, 0.95)
    assert m.summary(1) == pytest.approx({"avg_acc": 0.925, "forgetting": -0.10, "bwt": 0.10})
    with pytest.raises(ValueError, match=r"R\[2\]\[0\]"):
        m.average(2)


def test_matrix_row_and_array():
    m = _hand_matrix()
    row0 = m.row(0)
    assert row0[0] == pytest.approx(0.80) and math.isnan(row0[1]) and math.isnan(row0[2])
    assert m.row(2) == pytest.approx([0.60, 0.80, 0.85])
    a = m.as_array()
    assert a.shape == (3, 3) and np.isnan(a[0, 1]) and a[1, 0] == pytest.approx(0.90)
    a[1, 0] = 0.0  # a copy: the matrix is unchanged
    assert m.get(1, 0) == pytest.approx(0.90)


def test_matrix_set_rejects_future_and_out_of_range():
    m = AccuracyMatrix(3)
    with pytest.raises(ValueError, match="task 2 > stage 1"):
        m.set(1, 2, 0.5)
    with pytest.raises(ValueError, match="stage 3 out of range"):
        m.set(3, 0, 0.5)
    with pytest.raises(ValueError, match="stage -1 out of range"):
        m.set(-1, 0, 0.5)
    with pytest.raises(ValueError, match="task -1 out of range"):
        m.set(1, -1, 0.5)
    with pytest.raises(ValueError, match="finite"):
        m.set(0, 0, float("nan"))
    with pytest.raises(ValueError, match="stage must be an int"):
        m.set(0.0, 0, 0.5)
    with pytest.raises(ValueError, match="num_tasks"):
        AccuracyMatrix(0)


def test_forgetting_and_bwt_read_only_lower_triangle():
    m = _hand_matrix()
    # upper-triangle (future) evaluations must not change forgetting / BWT
    m.set(0, 1, 0.99, allow_future=True)
    m.set(0, 2, 0.99, allow_future=True)
    m.set(1, 2, 0.99, allow_future=True)
    assert m.forgetting(2) == pytest.approx(0.225)
    assert m.backward_transfer(2) == pytest.approx(-0.175)
    assert m.average(2) == pytest.approx(0.75)


def test_forward_transfer():
    m = _hand_matrix()
    baseline = [0.50, 0.50, 0.52]
    with pytest.raises(ValueError, match=r"R\[0\]\[1\].*R\[1\]\[2\]"):
        m.forward_transfer(2, baseline)
    m.set(0, 1, 0.55, allow_future=True)
    m.set(1, 2, 0.60, allow_future=True)
    # ((0.55 - 0.50) + (0.60 - 0.52)) / 2 = (0.05 + 0.08) / 2 = 0.065
    assert m.forward_transfer(2, baseline) == pytest.approx(0.065)
    # stage 1: 0.55 - 0.50
    assert m.forward_transfer(1, baseline) == pytest.approx(0.05)
    assert m.forward_transfer(0, baseline) == 0.0
    with pytest.raises(ValueError, match="baseline"):
        m.forward_transfer(2, [0.5, 0.5])


def test_missing_entries_are_named():
    m = AccuracyMatrix(3)
    m.set(2, 0, 0.6)
    m.set(2, 1, 0.7)
    m.set(2, 2, 0.8)
    with pytest.raises(ValueError, match=r"forgetting\(2\).*R\[0\]\[0\]"):
        m.forgetting(2)
    with pytest.raises(ValueError, match=r"backward_transfer\(2\).*R\[0\]\[0\].*R\[1\]\[1\]"):
        m.backward_transfer(2)


def test_json_round_trip_with_nan():
    m = _hand_matrix()
    m.set(0, 1, 0.55, allow_future=True)
    d = m.to_dict()
    assert d["num_tasks"] == 3
    assert d["values"][0] == [pytest.approx(0.80), pytest.approx(0.55), None]
    text = json.dumps(d, allow_nan=False)  # strict JSON: no NaN tokens
    back = AccuracyMatrix.from_dict(json.loads(text))
    assert back == m
    assert np.array_equal(back.as_array(), m.as_array(), equal_nan=True)


def test_from_dict_validation():
    with pytest.raises(ValueError, match="num_tasks"):
        AccuracyMatrix.from_dict({"values": []})
    with pytest.raises(ValueError, match="2 rows"):
        AccuracyMatrix.from_dict({"num_tasks": 2, "values": [[None, None]]})
    with pytest.raises(ValueError, match="row 1"):
        AccuracyMatrix.from_dict({"num_tasks": 2, "values": [[None, None], [0.5]]})
    with pytest.raises(ValueError, match="number or None"):
        AccuracyMatrix.from_dict({"num_tasks": 1, "values": [["x"]]})


def test_equality():
    a, b = _hand_matrix(), _hand_matrix()
    assert a == b  # NaN cells compare equal
    b.set(2, 2, 0.86)
    assert a != b
    assert AccuracyMatrix(2) != AccuracyMatrix(3)
    assert (AccuracyMatrix(2) == "not a matrix") is False
