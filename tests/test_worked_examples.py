"""Tier 1: maps worked out by hand on tiny networks with written-out weights.

The "features" layer is an identity on a hand-written 2-channel 2x2 input, so the activation A is:
    A0 = [[1, 2], [3, 4]]   (sum 10, mean 2.5)
    A1 = [[0, 1], [0, 0]]   (sum 1, mean 0.25)
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import camlens
from camlens.explanation import Explanation

A = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [0.0, 0.0]]]], dtype=torch.float64)
W = [[1.0, 2.0], [3.0, -1.0]]  # class 0, class 1
B = [0.0, -50.0]


class LinearHead(nn.Module):
    """features (identity) -> global average pooling -> linear: S_c = sum_k W_ck mean(A_k) + b_c."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Identity()
        self.fc = nn.Linear(2, 2).double()
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor(W))
            self.fc.bias.copy_(torch.tensor(B))
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean((2, 3)))


class SquareHead(LinearHead):
    """S_c = mean_ij (sum_k W_ck A_kij)^2, so dS_c/dA_kij = 0.5 * M_c(ij) * W_ck (M_c = CAM of c)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = torch.einsum("ck,bkhw->bchw", self.fc.weight, self.features(x))
        return (m**2).mean((2, 3))


def raw(method: str, model: nn.Module, targets: object, **options: object) -> list[list[float]]:
    exp = camlens.explain(model, A, method=method, layer="features", targets=targets, **options)
    return exp.raw[0, 0].tolist()


def close(got: list[list[float]], expected: list[list[float]]) -> None:
    torch.testing.assert_close(
        torch.tensor(got, dtype=torch.float64), torch.tensor(expected, dtype=torch.float64), rtol=1e-9, atol=1e-12
    )


def test_cam() -> None:
    # M_0 = 1*A0 + 2*A1 = [[1, 4], [3, 4]];  M_1 = 3*A0 - A1 = [[3, 5], [9, 12]]
    close(raw("cam", LinearHead(), 0), [[1, 4], [3, 4]])
    close(raw("cam", LinearHead(), 1), [[3, 5], [9, 12]])


def test_gradcam_on_linear_head_is_cam_over_hw() -> None:
    # dS/dA_kij = W_ck / 4, alpha = [0.25, 0.5] -> 0.25*A0 + 0.5*A1
    close(raw("gradcam", LinearHead(), 0), [[0.25, 1.0], [0.75, 1.0]])


def test_gradcam_counterfactual() -> None:
    close(raw("gradcam", LinearHead(), 0, counterfactual=True), [[-0.25, -1.0], [-0.75, -1.0]])


# SquareHead, class 0: M_0 = [[1, 4], [3, 4]]; G_0 = 0.5*M_0*1 = [[.5, 2], [1.5, 2]]; G_1 = 0.5*M_0*2 = [[1, 4], [3, 4]]


def test_gradcam_nonlinear_head() -> None:
    # alpha_0 = mean(G_0) = 6/4 = 1.5; alpha_1 = mean(G_1) = 12/4 = 3 -> 1.5*A0 + 3*A1
    close(raw("gradcam", SquareHead(), 0), [[1.5, 6.0], [4.5, 6.0]])


def test_hirescam_and_layercam() -> None:
    # G_0*A0 + G_1*A1 = [[.5, 4], [4.5, 8]] + [[0, 4], [0, 0]]; all G > 0 so LayerCAM's ReLU changes nothing
    close(raw("hirescam", SquareHead(), 0), [[0.5, 8.0], [4.5, 8.0]])
    close(raw("layercam", SquareHead(), 0), [[0.5, 8.0], [4.5, 8.0]])


def test_layercam_drops_negative_gradients() -> None:
    # class 1 of SquareHead: M_1 = [[3, 5], [9, 12]], G_0 = 0.5*M_1*3, G_1 = 0.5*M_1*(-1) < 0 -> only k=0 counts
    # LayerCAM = 1.5*M_1*A0 = [[4.5, 15], [40.5, 72]]; HiResCAM adds -0.5*M_1*A1 = [[0, -2.5], [0, 0]]
    close(raw("layercam", SquareHead(), 1), [[4.5, 15.0], [40.5, 72.0]])
    close(raw("hirescam", SquareHead(), 1), [[4.5, 12.5], [40.5, 72.0]])


def test_xgradcam() -> None:
    # alpha_0 = (1*.5 + 2*2 + 3*1.5 + 4*2) / 10 = 1.7; alpha_1 = (1*4) / 1 = 4 -> 1.7*A0 + 4*A1
    close(raw("xgradcam", SquareHead(), 0), [[1.7, 7.4], [5.1, 6.8]])


def test_gradcam_plus_plus_eq19() -> None:
    # for g > 0: a = g^2 / (2 g^2 + S g^3) = 1 / (2 + S g), S_0 = 10, S_1 = 1
    # w_0 = .5/7 + 2/22 + 1.5/17 + 2/22;  w_1 = 1/3 + 4/6 + 3/5 + 4/6 = 34/15
    w0 = 0.5 / 7 + 2 / 22 + 1.5 / 17 + 2 / 22
    w1 = 34 / 15
    close(raw("gradcam++", SquareHead(), 0), [[w0, 2 * w0 + w1], [3 * w0, 4 * w0]])


def test_ablationcam_and_its_sign_flip() -> None:
    # class 0: y = 2.5 + 2*.25 = 3; without A0: 0.5, without A1: 2.5 -> w = [2.5/3, 0.5/3]
    close(raw("ablationcam", LinearHead(), 0), [[5 / 6, 10 / 6 + 1 / 6], [15 / 6, 20 / 6]])
    # class 1: y = 7.5 - .25 - 50 = -42.75; without A0: -50.25; without A1: -42.5
    # w = [(-42.75+50.25)/-42.75, (-42.75+42.5)/-42.75]: dividing by a negative score flips the signs
    w0, w1 = 7.5 / -42.75, -0.25 / -42.75
    close(raw("ablationcam", LinearHead(), 1), [[w0, 2 * w0 + w1], [3 * w0, 4 * w0]])


def _scorecam_logits() -> tuple[list[float], list[float]]:
    # masks (input is 2x2, so no upsampling): H_0 = (A0 - 1)/3 = [[0, 1/3], [2/3, 1]], H_1 = A1
    # X*H_0: ch0 = [[0, 2/3], [2, 4]] (mean 5/3), ch1 = [[0, 1/3], [0, 0]] (mean 1/12)
    # X*H_1: ch0 = [[0, 2], [0, 0]] (mean 1/2),  ch1 = [[0, 1], [0, 0]] (mean 1/4)
    class0 = [5 / 3 + 2 / 12, 0.5 + 0.5]
    class1 = [3 * 5 / 3 - 1 / 12 - 50, 3 * 0.5 - 0.25 - 50]
    return class0, class1


def test_scorecam_logit_no_baseline_no_softmax() -> None:
    (c0, c1), _ = _scorecam_logits()
    close(raw("scorecam", LinearHead(), 0, score="logit", baseline=False), [[c0, 2 * c0 + c1], [3 * c0, 4 * c0]])


def test_scorecam_baseline_and_channel_softmax() -> None:
    _, (c0, c1) = _scorecam_logits()
    # baseline X_b = 0: logit_1 = b_1 = -50, so C_k = logit - (-50)
    d0, d1 = c0 + 50, c1 + 50
    close(raw("scorecam", LinearHead(), 1, score="logit"), [[d0, 2 * d0 + d1], [3 * d0, 4 * d0]])
    s0 = math.exp(d0) / (math.exp(d0) + math.exp(d1))
    s1 = 1 - s0
    close(raw("scorecam", LinearHead(), 1, score="logit", channel_softmax=True), [[s0, 2 * s0 + s1], [3 * s0, 4 * s0]])


def test_scorecam_probabilities() -> None:
    # default score="prob": softmax over the two classes of the masked input, minus the baseline's
    (a0, a1), (b0, b1) = _scorecam_logits()

    def p0(l0: float, l1: float) -> float:
        return math.exp(l0) / (math.exp(l0) + math.exp(l1))

    base = p0(0.0, -50.0)
    w0, w1 = p0(a0, b0) - base, p0(a1, b1) - base
    close(raw("scorecam", LinearHead(), 0), [[w0, 2 * w0 + w1], [3 * w0, 4 * w0]])


def test_eigencam_obvious_principal_direction() -> None:
    # points (A0_ij, A1_ij) with A1 = 0 lie on the first axis: v_1 = (±1, 0), the map is ±A0, sign fixed to +
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 0.0], [0.0, 0.0]]]], dtype=torch.float64)
    exp = camlens.explain(LinearHead(), x, method="eigencam", layer="features", targets=0)
    close(exp.raw[0, 0].tolist(), [[1, 2], [3, 4]])


def test_maps_relu_upsample_minmax() -> None:
    # raw [-1, 4] -> ReLU [0, 4] -> bilinear 2 -> 4 (align_corners=False): [0, 1, 3, 4] -> /4
    exp = Explanation(torch.tensor([[[[-1.0, 4.0]]]]), None, torch.zeros(1, 1), None, "x", "x", (1, 4))
    assert exp.maps.flatten().tolist() == [0.0, 0.25, 0.75, 1.0]


@pytest.mark.parametrize("value", [0.0, 3.0, -2.0, 1e-30])
def test_constant_map_gives_zeros_never_nan(value: float) -> None:
    exp = Explanation(torch.full((1, 1, 3, 3), value), None, torch.zeros(1, 1), None, "x", "x", (7, 5))
    assert exp.maps.shape == (1, 1, 7, 5)
    assert exp.maps.abs().sum() == 0 and not exp.maps.isnan().any()


def test_targets_forms_select_the_right_scores() -> None:
    model = LinearHead()
    x = torch.cat([A, A.flip(-1)])  # logits: sample 0: [3, -42.75]; same means for the flipped one
    logits = model(x).detach()
    cases = {
        None: [[0], [0]],
        1: [[1], [1]],
        "top2": [[0, 1], [0, 1]],
        (1, 0): [[1], [0]],
        ((1, 0), (0, 1)): [[1, 0], [0, 1]],
    }
    for targets, ids in cases.items():
        exp = camlens.explain(
            model, x, method="cam", layer="features", targets=list(targets) if isinstance(targets, tuple) else targets
        )
        assert exp.targets is not None and exp.targets.tolist() == ids
        torch.testing.assert_close(exp.scores, logits.gather(1, torch.tensor(ids)))
    exp = camlens.explain(model, x, method="gradcam", layer="features", targets=lambda out: out[:, 1] - out[:, 0])
    assert exp.targets is None and exp.scores[:, 0].tolist() == (logits[:, 1] - logits[:, 0]).tolist()
    two = camlens.explain(model, x, method="gradcam", layer="features", targets=lambda out: out)
    assert two.raw.shape == (2, 2, 2, 2)
