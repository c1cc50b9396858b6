"""Tier 1: maps worked out by hand on tiny networks with written-out weights.

Every expected number below is a literal (or a literal combination of the literal activations),
derived in the comment next to it; nothing is computed with camlens.

The networks feed the input through ``features = nn.Identity()``, so the explained activation A is
the hand-written input itself (2 channels, 2x2):

    sample 0:  A0 = [[1, 2], [3, 4]]   sum 10, mean 2.5      A1 = [[4, 0], [0, 0]]   sum 4, mean 1
    sample 1:  A0 = [[0, 0], [0, -4]]  sum -4, mean -1       A1 = [[2, 2], [2, 2]]   sum 8, mean 2

LinearHead: features -> global average pooling -> fc, with
    W = [[1, 2], [-1, 1], [0.5, -2]],  b = [0, 1, -50]
so S_c = W_c0 mean(A0) + W_c1 mean(A1) + b_c:
    sample 0: S = [2.5 + 2 + 0, -2.5 + 1 + 1, 1.25 - 2 - 50] = [4.5, -0.5, -50.75]
    sample 1: S = [-1 + 4 + 0,   1 + 2 + 1,  -0.5 - 4 - 50] = [3,   4,    -54.5]
and dS_c/dA_kij = W_ck / 4 everywhere (hw = 4).

SquareHead: features -> x**2 -> global average pooling -> fc (same W, b), a non-linear head:
S_c = sum_k W_ck mean(A_k**2) + b_c and dS_c/dA_kij = W_ck * 2 A_kij / 4 = W_ck A_kij / 2.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import camlens
from camlens import Explanation, normalize_maps

F64 = torch.float64


def t(values: object) -> torch.Tensor:
    return torch.tensor(values, dtype=F64)


# the activations of the module docstring
S0_A0 = t([[1, 2], [3, 4]])
S0_A1 = t([[4, 0], [0, 0]])
S1_A0 = t([[0, 0], [0, -4]])
S1_A1 = t([[2, 2], [2, 2]])
X = torch.stack([torch.stack([S0_A0, S0_A1]), torch.stack([S1_A0, S1_A1])])  # (2, 2, 2, 2)

W = [[1.0, 2.0], [-1.0, 1.0], [0.5, -2.0]]
BIAS = [0.0, 1.0, -50.0]

# targets used throughout: sample 0 -> classes 0 and 2, sample 1 -> classes 1 and 0
TARGETS = [[0, 2], [1, 0]]


class LinearHead(nn.Module):
    """features (identity) -> global average pooling -> linear, weights written out."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2, 3).double()
        with torch.no_grad():
            self.fc.weight.copy_(t(W))
            self.fc.bias.copy_(t(BIAS))
        self.eval()

    def head_input(self, a: torch.Tensor) -> torch.Tensor:
        return a

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.head_input(self.features(x))).flatten(1))


class SquareHead(LinearHead):
    """features (identity) -> x**2 -> global average pooling -> linear: gradients vary over pixels."""

    def head_input(self, a: torch.Tensor) -> torch.Tensor:
        return a**2


def run(method: str, x: torch.Tensor = X, targets: object = TARGETS, net: type[nn.Module] = LinearHead, **options):
    return camlens.explain(net(), x, method=method, layer="features", targets=targets, **options)


def close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- the networks themselves


def test_hand_written_logits() -> None:
    """The logits of the module docstring (checks the test nets, so every later number rests on them)."""
    with torch.no_grad():
        close(LinearHead()(X), t([[4.5, -0.5, -50.75], [3.0, 4.0, -54.5]]))
        # SquareHead on sample 0: mean(A0^2) = (1+4+9+16)/4 = 7.5, mean(A1^2) = 16/4 = 4
        # S = [7.5 + 8, -7.5 + 4 + 1, 3.75 - 8 - 50]
        close(SquareHead()(X[:1]), t([[15.5, -2.5, -54.25]]))


# --------------------------------------------------------------------------- CAM


def test_cam_by_hand() -> None:
    # M_c = W_c0 A0 + W_c1 A1, bias excluded
    # s0, c0: 1*A0 + 2*A1          = [[1+8, 2], [3, 4]]             = [[9, 2], [3, 4]]
    # s0, c2: 0.5*A0 - 2*A1        = [[0.5-8, 1], [1.5, 2]]          = [[-7.5, 1], [1.5, 2]]
    # s1, c1: -1*A0 + 1*A1         = [[0+2, 0+2], [0+2, 4+2]]        = [[2, 2], [2, 6]]
    # s1, c0: 1*A0 + 2*A1          = [[0+4, 0+4], [0+4, -4+4]]       = [[4, 4], [4, 0]]
    exp = run("cam")
    close(exp.raw, t([[[[9, 2], [3, 4]], [[-7.5, 1], [1.5, 2]]], [[[2, 2], [2, 6]], [[4, 4], [4, 0]]]]))
    assert exp.targets.tolist() == TARGETS
    close(exp.scores, t([[4.5, -50.75], [4.0, 3.0]]))
    # the bias is not in the map: mean(M_c) = S_c - b_c; s0, c2: (-7.5+1+1.5+2)/4 = -0.75 = -50.75 + 50
    assert float(exp.raw[0, 1].mean()) == -0.75


def test_cam_refuses_a_nonlinear_head() -> None:
    # SquareHead's output is fc(GAP(A^2)), not fc(GAP(A)) nor fc(GMP(A)): CAM would be a wrong map
    with pytest.raises(ValueError, match="gradcam"):
        run("cam", net=SquareHead)


# --------------------------------------------------------------------------- gradient methods, linear head

# On LinearHead G_kij = W_ck / 4 is constant over pixels, so
# Grad-CAM: alpha_k = W_ck / 4, raw = CAM / 4:
GRADCAM_LINEAR = t(
    [
        [[[2.25, 0.5], [0.75, 1.0]], [[-1.875, 0.25], [0.375, 0.5]]],
        [[[0.5, 0.5], [0.5, 1.5]], [[1.0, 1.0], [1.0, 0.0]]],
    ]
)


@pytest.mark.parametrize("method", ["gradcam", "hirescam", "xgradcam"])
def test_gradient_methods_on_linear_head(method: str) -> None:
    # HiResCAM: sum_k G_k * A_k = sum_k W_ck/4 A_k = CAM/4.
    # XGrad-CAM: alpha_k = sum_ij A_kij W_ck/4 / sum_ab A_kab = W_ck/4 (all four channel sums,
    # 10, 4, -4, 8, are non-zero), so CAM/4 as well.
    exp = run(method)
    close(exp.raw, GRADCAM_LINEAR)
    close(exp.scores, t([[4.5, -50.75], [4.0, 3.0]]))


def test_counterfactual_gradcam_negates_raw() -> None:
    # the gradient of -S: alpha_k = -W_ck / 4, raw = -CAM / 4
    close(run("gradcam", counterfactual=True).raw, -GRADCAM_LINEAR)


def test_layercam_on_linear_head() -> None:
    # raw = sum_k ReLU(W_ck / 4) A_k
    # s0, c0: W = (1, 2)    -> 0.25 A0 + 0.5 A1 = [[2.25, .5], [.75, 1]]
    # s0, c2: W = (.5, -2)  -> 0.125 A0         = [[.125, .25], [.375, .5]]
    # s1, c1: W = (-1, 1)   -> 0.25 A1          = [[.5, .5], [.5, .5]]
    # s1, c0: W = (1, 2)    -> 0.25 A0 + 0.5 A1 = [[1, 1], [1, 0]]
    close(
        run("layercam").raw,
        t([[[[2.25, 0.5], [0.75, 1]], [[0.125, 0.25], [0.375, 0.5]]], [[[0.5, 0.5], [0.5, 0.5]], [[1, 1], [1, 0]]]]),
    )


def test_gradcampp_on_linear_head() -> None:
    # g = W_ck / 4 at every pixel; eq. 19: a = g^2 / (2 g^2 + S_k g^3) = 1 / (2 + S_k g) (g != 0)
    # w_k = sum_ij a ReLU(g) = 4 a ReLU(W_ck / 4) = ReLU(W_ck) / (2 + S_k W_ck / 4)
    # s0, c0: S = (10, 4), W = (1, 2):   w0 = 1 / (2 + 2.5) = 2/9,   w1 = 2 / (2 + 2) = 1/2
    #         raw = 2/9 A0 + 1/2 A1 = [[2/9 + 2, 4/9], [6/9, 8/9]]
    # s0, c2: W = (.5, -2):              w0 = .5 / (2 + 1.25) = 2/13, w1 = 0
    #         raw = 2/13 A0 = [[2/13, 4/13], [6/13, 8/13]]
    # s1, c1: S = (-4, 8), W = (-1, 1):  w0 = 0,  w1 = 1 / (2 + 2) = 1/4
    #         raw = 1/4 A1 = [[.5, .5], [.5, .5]]
    # s1, c0: W = (1, 2):                w0 = 1 / (2 - 1) = 1,  w1 = 2 / (2 + 4) = 1/3
    #         raw = A0 + 1/3 A1 = [[2/3, 2/3], [2/3, -4 + 2/3]]
    close(
        run("gradcam++").raw,
        t(
            [
                [[[2 / 9 + 2, 4 / 9], [6 / 9, 8 / 9]], [[2 / 13, 4 / 13], [6 / 13, 8 / 13]]],
                [[[0.5, 0.5], [0.5, 0.5]], [[2 / 3, 2 / 3], [2 / 3, -10 / 3]]],
            ]
        ),
    )


def test_counterfactual_gradcampp_on_linear_head() -> None:
    # g = -W_ck / 4. s0, c0: W = (1, 2) -> ReLU(g) = 0 everywhere -> all-zero map.
    # s0, c2: -W = (-.5, 2): w1 = ReLU(2) / (2 + 4 * 2/4) = 2/4 = 1/2 -> raw = A1 / 2 = [[2, 0], [0, 0]]
    exp = run("gradcam++", targets=[[0, 2], [1, 0]], counterfactual=True)
    close(exp.raw[0], t([[[0, 0], [0, 0]], [[2, 0], [0, 0]]]))


# --------------------------------------------------------------------------- gradient methods, square head

# a sample with mixed signs for SquareHead, class 0 (W = (1, 2)):
#   A0 = [[2, -2], [0, 4]]  sum 4     G0 = 1 * A0 / 2 = [[1, -1], [0, 2]]
#   A1 = [[1, 1], [-1, -1]] sum 0     G1 = 2 * A1 / 2 = [[1, 1], [-1, -1]]
M_A0 = t([[2, -2], [0, 4]])
M_A1 = t([[1, 1], [-1, -1]])
XM = torch.stack([torch.stack([M_A0, M_A1]), X[0]])  # batch: the mixed sample, then sample 0


def test_gradcam_square_head() -> None:
    # mixed: alpha = (mean G0, mean G1) = (2/4, 0) -> raw = A0 / 2 = [[1, -1], [0, 2]]
    # s0:    G0 = A0/2 = [[.5, 1], [1.5, 2]], G1 = A1 = [[4, 0], [0, 0]]; alpha = (5/4, 1)
    #        raw = 1.25 A0 + A1 = [[1.25 + 4, 2.5], [3.75, 5]]
    exp = run("gradcam", x=XM, targets=0, net=SquareHead)
    close(exp.raw, t([[[[1, -1], [0, 2]]], [[[5.25, 2.5], [3.75, 5]]]]))
    # S_0 = mean(A0^2) + 2 mean(A1^2) + 0: mixed (4+4+0+16)/4 + 2 * 1 = 8; s0: 7.5 + 8 = 15.5
    close(exp.scores, t([[8.0], [15.5]]))
    # counterfactual: negated
    close(run("gradcam", x=XM, targets=0, net=SquareHead, counterfactual=True).raw, -exp.raw)


def test_hirescam_square_head() -> None:
    # raw = G0 A0 + G1 A1 = A0^2 / 2 + A1^2
    # mixed: [[2, 2], [0, 8]] + [[1, 1], [1, 1]]      = [[3, 3], [1, 9]]
    # s0:    [[.5, 2], [4.5, 8]] + [[16, 0], [0, 0]]  = [[16.5, 2], [4.5, 8]]
    close(run("hirescam", x=XM, targets=0, net=SquareHead).raw, t([[[[3, 3], [1, 9]]], [[[16.5, 2], [4.5, 8]]]]))


def test_xgradcam_square_head() -> None:
    # alpha_k = sum_ij A_kij G_kij / sum_ab A_kab
    # mixed: ch0: sum(A0^2 / 2) / 4 = 12 / 4 = 3; ch1: sum A1 = 0 -> weight 0 (by definition)
    #        raw = 3 A0 = [[6, -6], [0, 12]]
    # s0:    ch0: sum(A0^2 / 2) / 10 = 15 / 10 = 1.5; ch1: sum(A1 * A1) / 4 = 16 / 4 = 4
    #        raw = 1.5 A0 + 4 A1 = [[1.5 + 16, 3], [4.5, 6]]
    close(run("xgradcam", x=XM, targets=0, net=SquareHead).raw, t([[[[6, -6], [0, 12]]], [[[17.5, 3], [4.5, 6]]]]))


def test_layercam_square_head() -> None:
    # raw = ReLU(G0) A0 + ReLU(G1) A1
    # mixed: ReLU(G0) = [[1, 0], [0, 2]] -> [[2, 0], [0, 8]];  ReLU(G1) = [[1, 1], [0, 0]] -> [[1, 1], [0, 0]]
    #        raw = [[3, 1], [0, 8]]
    # s0:    G >= 0 everywhere: same as HiResCAM, [[16.5, 2], [4.5, 8]]
    close(run("layercam", x=XM, targets=0, net=SquareHead).raw, t([[[[3, 1], [0, 8]]], [[[16.5, 2], [4.5, 8]]]]))
    # counterfactual, mixed: ReLU(-G0) = [[0, 1], [0, 0]] -> [[0, -2], [0, 0]]
    #                        ReLU(-G1) = [[0, 0], [1, 1]] -> [[0, 0], [-1, -1]];  raw = [[0, -2], [-1, -1]]
    exp = run("layercam", x=XM[:1], targets=0, net=SquareHead, counterfactual=True)
    close(exp.raw, t([[[[0, -2], [-1, -1]]]]))


def test_gradcampp_square_head() -> None:
    # a = g^2 / (2 g^2 + S_k g^3) = 1 / (2 + S_k g) where g != 0, 0 where g = 0; w_k = sum a ReLU(g)
    # mixed, ch0 (S = 4, G0 = [[1, -1], [0, 2]]):
    #   g = 1: a = 1/6, ReLU = 1 -> 1/6;  g = -1: ReLU = 0;  g = 0: a = 0;  g = 2: a = 1/10, ReLU = 2 -> 1/5
    #   w0 = 1/6 + 1/5 = 11/30
    # mixed, ch1 (S = 0, G1 = [[1, 1], [-1, -1]]): a = g^2 / (2 g^2) = 1/2; w1 = 1/2 + 1/2 = 1
    # raw = 11/30 A0 + A1 = [[22/30 + 1, -22/30 + 1], [0 - 1, 44/30 - 1]] = [[26/15, 4/15], [-1, 7/15]]
    # s0, ch0 (S = 10, G0 = [[.5, 1], [1.5, 2]]): a = 1/(2 + 10 g) = 1/7, 1/12, 1/17, 1/22
    #   w0 = .5/7 + 1/12 + 1.5/17 + 2/22 = 1/14 + 1/12 + 3/34 + 1/11
    # s0, ch1 (S = 4, G1 = [[4, 0], [0, 0]]): a = 1/(2 + 16) = 1/18 at the 4, w1 = 4/18 = 2/9
    exp = run("gradcam++", x=XM, targets=0, net=SquareHead)
    close(exp.raw[0, 0], t([[26 / 15, 4 / 15], [-1, 7 / 15]]))
    w0 = 1 / 14 + 1 / 12 + 3 / 34 + 1 / 11
    close(exp.raw[1, 0], w0 * S0_A0 + 2 / 9 * S0_A1)


def test_gradcam_differs_from_hirescam_on_square_head() -> None:
    # the two numbers above, side by side: with a non-linear head the spatial averaging matters
    a = run("gradcam", x=XM, targets=0, net=SquareHead).raw
    b = run("hirescam", x=XM, targets=0, net=SquareHead).raw
    assert not torch.allclose(a * 4, b)


# --------------------------------------------------------------------------- Eigen-CAM

E_RANK1 = torch.stack([S0_A0, 2 * S0_A0])  # every position is t (1, 2), t = 1..4
E_AXES = torch.stack([t([[3, 0], [0, -3]]), t([[0, 1], [-1, 0]])])
E_NEG = -E_RANK1


def test_eigencam_by_hand() -> None:
    # rank 1: O = [t (1, 2)] (hw x C), v1 = +-(1, 2)/sqrt(5), O v1 = +-t sqrt(5);
    #   channel sum = 3t > 0, so the sign is + : raw = sqrt(5) [[1, 2], [3, 4]]
    # axes: O = [(3, 0), (0, 1), (0, -1), (-3, 0)], O^T O = diag(18, 2), v1 = +-(1, 0), O v1 = +-(3, 0, 0, -3);
    #   channel sum = (3, 1, -1, -3), dot with (3, 0, 0, -3) = 18 > 0: raw = [[3, 0], [0, -3]]
    # negative rank 1: O = [-t (1, 2)], O v1 = -+t sqrt(5), channel sum = -3t: the sign giving a positive
    #   correlation is raw = -sqrt(5) [[1, 2], [3, 4]]
    x = torch.stack([E_RANK1, E_AXES, E_NEG])
    exp = run("eigencam", x=x, targets="top2")
    r5 = math.sqrt(5)
    expected = torch.stack([r5 * S0_A0, E_AXES[0], -r5 * S0_A0])
    close(exp.raw, expected[:, None].expand(3, 2, 2, 2))  # the same map for both targets
    # the all-negative map has nothing positive: ReLU leaves a constant 0 -> all-zero maps, no NaN
    assert torch.equal(exp.maps[2], torch.zeros(2, 2, 2, dtype=F64))


def test_eigencam_centered_by_hand() -> None:
    # rank 1 centred: rows (t - 2.5)(1, 2), v1 = (1, 2)/sqrt(5), map = (t - 2.5) sqrt(5);
    #   dot with the (uncentred) channel sum 3t: 3 sqrt(5) sum (t - 2.5) t = 3 sqrt(5) (30 - 25) > 0
    # axes: the rows already have mean (0, 0): unchanged
    x = torch.stack([E_RANK1, E_AXES])
    exp = run("eigencam", x=x, targets=0, center=True)
    close(exp.raw[0, 0], math.sqrt(5) * t([[-1.5, -0.5], [0.5, 1.5]]))
    close(exp.raw[1, 0], E_AXES[0])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_eigencam_half_precision_by_hand(dtype: torch.dtype) -> None:
    # the rank-1 case above, in half precision: raw = sqrt(5) [[1, 2], [3, 4]] (to half accuracy)
    exp = camlens.explain(LinearHead().to(dtype), E_RANK1[None].to(dtype), method="eigencam", layer="features")
    torch.testing.assert_close(exp.raw[0, 0].double(), math.sqrt(5) * S0_A0, rtol=1e-2, atol=1e-2)


# --------------------------------------------------------------------------- Score-CAM

# masks H_k = minmax(A_k) (the layer is the input's 2x2 size, so the bilinear upsampling is the identity):
# s0: H0 = [[0, 1/3], [2/3, 1]]  H1 = [[1, 0], [0, 0]]
#     X*H0: ch0 = [[0, 2/3], [2, 4]] (mean 5/3), ch1 = A1*H0 = 0 (mean 0)
#           logits = [5/3, -5/3 + 0 + 1, 5/6 - 0 - 50] = [5/3, -2/3, -295/6]
#     X*H1: ch0 = [[1, 0], [0, 0]] (mean 1/4), ch1 = [[4, 0], [0, 0]] (mean 1)
#           logits = [1/4 + 2, -1/4 + 1 + 1, 1/8 - 2 - 50] = [9/4, 7/4, -415/8]
# s1: H0 = (A0 + 4)/4 = [[1, 1], [1, 0]]; A1 is constant: its mask is all zero (min-max of a constant
#     is 0/0; camlens' choice: the masked input is then the baseline X_b = 0)
#     X*H0: ch0 = [[0, 0], [0, -4*0]] (mean 0), ch1 = [[2, 2], [2, 0]] (mean 3/2)
#           logits = [0 + 3, 0 + 3/2 + 1, 0 - 3 - 50] = [3, 5/2, -53]
#     X*0:  logits = b = [0, 1, -50]
# baseline X_b = 0: logits = b = [0, 1, -50] for both samples
SCORE_LOGITS = {  # (sample, channel) -> logits of the masked input
    (0, 0): [5 / 3, -2 / 3, -295 / 6],
    (0, 1): [9 / 4, 7 / 4, -415 / 8],
    (1, 0): [3.0, 2.5, -53.0],
    (1, 1): [0.0, 1.0, -50.0],
}
ACTS = {0: (S0_A0, S0_A1), 1: (S1_A0, S1_A1)}


def softmax(values: list[float]) -> list[float]:
    e = [math.exp(v - max(values)) for v in values]
    return [v / sum(e) for v in e]


def test_scorecam_logits_no_baseline_by_hand() -> None:
    # weights = masked logits of the target class
    # s0, c0: 5/3 A0 + 9/4 A1 = [[5/3 + 9, 10/3], [5, 20/3]] = [[32/3, 10/3], [5, 20/3]]
    # s1, c1: 5/2 A0 + 1 A1   = [[2, 2], [2, -10 + 2]]       = [[2, 2], [2, -8]]
    # s1, c0: 3 A0 + 0 A1     = [[0, 0], [0, -12]]
    # s0, c2: -295/6 A0 - 415/8 A1
    exp = run("scorecam", score="logit", baseline=False, channel_softmax=False)
    close(exp.raw[0, 0], t([[32 / 3, 10 / 3], [5, 20 / 3]]))
    close(exp.raw[0, 1], -295 / 6 * S0_A0 - 415 / 8 * S0_A1)
    close(exp.raw[1, 0], t([[2, 2], [2, -8]]))
    close(exp.raw[1, 1], t([[0, 0], [0, -12]]))


def test_scorecam_logits_with_baseline_by_hand() -> None:
    # subtracting the baseline logit b_c: s0, c0: (5/3 - 0) A0 + (9/4 - 0) A1 (as above)
    # s1, c1: (5/2 - 1) A0 + (1 - 1) A1 = 3/2 A0 = [[0, 0], [0, -6]]
    exp = run("scorecam", score="logit")
    close(exp.raw[0, 0], t([[32 / 3, 10 / 3], [5, 20 / 3]]))
    close(exp.raw[1, 0], t([[0, 0], [0, -6]]))


def test_scorecam_default_probabilities_by_hand() -> None:
    # paper defaults: C_k = softmax(masked logits)_c - softmax(b)_c
    exp = run("scorecam")
    for b, ks in enumerate(TARGETS):
        base = softmax(BIAS)
        for k, c in enumerate(ks):
            w = [softmax(SCORE_LOGITS[(b, ch)])[c] - base[c] for ch in (0, 1)]
            close(exp.raw[b, k], w[0] * ACTS[b][0] + w[1] * ACTS[b][1])
    # a spot value written out: s0, c0, channel 0: e^(5/3) / (e^(5/3) + e^(-2/3) + e^(-295/6)) - 1 / (1 + e + e^-50)
    w00 = math.exp(5 / 3) / (math.exp(5 / 3) + math.exp(-2 / 3) + math.exp(-295 / 6)) - 1 / (1 + math.e + math.exp(-50))
    w01 = math.exp(9 / 4) / (math.exp(9 / 4) + math.exp(7 / 4) + math.exp(-415 / 8)) - 1 / (1 + math.e + math.exp(-50))
    close(exp.raw[0, 0], w00 * S0_A0 + w01 * S0_A1)


def test_scorecam_channel_softmax_by_hand() -> None:
    # s0, c0: softmax over the channels of the masked logits (5/3, 9/4)
    exp = run("scorecam", score="logit", channel_softmax=True)
    e0, e1 = math.exp(5 / 3), math.exp(9 / 4)
    close(exp.raw[0, 0], e0 / (e0 + e1) * S0_A0 + e1 / (e0 + e1) * S0_A1)


# --------------------------------------------------------------------------- Ablation-CAM


def test_ablationcam_by_hand() -> None:
    # w_k = (y - y_k) / y, y_k with channel k zeroed (its mean becomes 0)
    # s0, c0: y = 4.5; y_0 = 0 + 2 = 2; y_1 = 2.5 + 0 = 2.5 -> w = (2.5/4.5, 2/4.5) = (5/9, 4/9)
    #         raw = [[5/9 + 16/9, 10/9], [15/9, 20/9]]
    # s0, c2: y = -50.75; y_0 = -2 - 50 = -52; y_1 = 1.25 - 50 = -48.75
    #         w = (1.25 / -50.75, -2 / -50.75) = (-5/203, 8/203): the negative score flips the signs
    #         raw = (-5 A0 + 8 A1) / 203 = [[27, -10], [-15, -20]] / 203
    # s1, c1: y = 4; y_0 = 0 + 2 + 1 = 3; y_1 = 1 + 0 + 1 = 2 -> w = (1/4, 1/2)
    #         raw = [[0 + 1, 0 + 1], [0 + 1, -1 + 1]] = [[1, 1], [1, 0]]
    # s1, c0: y = 3; y_0 = 0 + 4 = 4; y_1 = -1 + 0 = -1 -> w = (-1/3, 4/3)
    #         raw = [[8/3, 8/3], [8/3, 4/3 + 8/3]]
    exp = run("ablationcam")
    close(
        exp.raw,
        t(
            [
                [[[21 / 9, 10 / 9], [15 / 9, 20 / 9]], [[27 / 203, -10 / 203], [-15 / 203, -20 / 203]]],
                [[[1, 1], [1, 0]], [[8 / 3, 8 / 3], [8 / 3, 4]]],
            ]
        ),
    )


def test_ablationcam_zero_score_warns_and_gives_zero() -> None:
    # A0 = 2 everywhere, A1 = 1 everywhere: S_1 = -2 + 1 + 1 = 0 exactly; (y - y_k) / 0 is undefined
    x = torch.stack([torch.full((2, 2), 2.0, dtype=F64), torch.ones(2, 2, dtype=F64)])[None]
    with pytest.warns(UserWarning, match="exactly 0"):
        exp = run("ablationcam", x=x, targets=1)
    assert torch.equal(exp.raw, torch.zeros(1, 1, 2, 2, dtype=F64))


def test_ablationcam_callable_target_by_hand() -> None:
    # target S_0 - S_1 = (W_0 - W_1) . means + (b_0 - b_1) = 2 mean(A0) + mean(A1) - 1
    # s0: y = 5 - 1 + 1 = 5 (= 4.5 - (-0.5)); y_0 = 0 + 1 - 1 = 0; y_1 = 5 + 0 - 1 = 4
    #     w = (5/5, 1/5) -> raw = A0 + A1/5 = [[1.8, 2], [3, 4]]
    # s1: y = -2 + 2 - 1 = -1;  y_0 = 0 + 2 - 1 = 1;  y_1 = -2 + 0 - 1 = -3
    #     w = ((-1 - 1)/-1, (-1 + 3)/-1) = (2, -2) -> raw = 2 A0 - 2 A1 = [[-4, -4], [-4, -12]]
    exp = run("ablationcam", targets=lambda out: out[:, 0] - out[:, 1])
    assert exp.targets is None
    close(exp.scores, t([[5.0], [-1.0]]))
    close(exp.raw, t([[[[1.8, 2], [3, 4]]], [[[-4, -4], [-4, -12]]]]))


# --------------------------------------------------------------------------- targets


@pytest.mark.parametrize(
    ("targets", "ids", "scores"),
    [
        (None, [[0], [1]], [[4.5], [4.0]]),  # top-1 of [4.5, -0.5, -50.75] and [3, 4, -54.5]
        (2, [[2], [2]], [[-50.75], [-54.5]]),
        ([2, 0], [[2], [0]], [[-50.75], [3.0]]),
        (torch.tensor([2, 0]), [[2], [0]], [[-50.75], [3.0]]),
        ([[0, 1], [2, 1]], [[0, 1], [2, 1]], [[4.5, -0.5], [-54.5, 4.0]]),
        (torch.tensor([[0, 1], [2, 1]]), [[0, 1], [2, 1]], [[4.5, -0.5], [-54.5, 4.0]]),
        ("top2", [[0, 1], [1, 0]], [[4.5, -0.5], [4.0, 3.0]]),
        ("top3", [[0, 1, 2], [1, 0, 2]], [[4.5, -0.5, -50.75], [4.0, 3.0, -54.5]]),
    ],
)
@pytest.mark.parametrize("method", ["cam", "gradcam"])
def test_target_forms_by_hand(method: str, targets: object, ids: list[list[int]], scores: list[list[float]]) -> None:
    exp = run(method, targets=targets)
    assert exp.targets.tolist() == ids
    close(exp.scores, t(scores))
    # and the maps follow the ids: CAM / (4 for Grad-CAM) = (W_c0 A0 + W_c1 A1) [/ 4]
    scale = 1.0 if method == "cam" else 0.25
    for b in range(2):
        for k, c in enumerate(ids[b]):
            close(exp.raw[b, k], scale * (W[c][0] * ACTS[b][0] + W[c][1] * ACTS[b][1]))


@pytest.mark.parametrize("scalar", [np.int64(2), torch.tensor(2)], ids=["numpy-int64", "0d-tensor"])
def test_scalar_class_id_forms(scalar: object) -> None:
    # the same as targets=2: ids [[2], [2]], scores [[-50.75], [-54.5]]
    exp = run("cam", targets=scalar)
    assert exp.targets.tolist() == [[2], [2]]
    close(exp.scores, t([[-50.75], [-54.5]]))


def test_callable_target_returning_b() -> None:
    # S = S_0 - S_1: scores [4.5 + 0.5, 3 - 4] = [5, -1]; dS/dA_k = (W_0k - W_1k)/4 = (2, 1)/4
    # s0: (2 A0 + A1)/4 = [[(2+4)/4, 4/4], [6/4, 8/4]] = [[1.5, 1], [1.5, 2]]
    # s1: (2 A0 + A1)/4 = [[2/4, 2/4], [2/4, (-8+2)/4]] = [[.5, .5], [.5, -1.5]]
    exp = run("gradcam", targets=lambda out: out[:, 0] - out[:, 1])
    assert exp.targets is None
    close(exp.scores, t([[5.0], [-1.0]]))
    close(exp.raw, t([[[[1.5, 1], [1.5, 2]]], [[[0.5, 0.5], [0.5, -1.5]]]]))


def test_callable_target_returning_bk() -> None:
    # targets (S_2, S_0 + S_1 + S_2): scores s0 = [-50.75, 4.5 - 0.5 - 50.75], s1 = [-54.5, 3 + 4 - 54.5]
    # gradients: W_2 / 4 = (.5, -2)/4 and (W_0 + W_1 + W_2)/4 = (.5, 1)/4
    # s0: (.5 A0 - 2 A1)/4 = [[-1.875, .25], [.375, .5]];  (.5 A0 + A1)/4 = [[1.125, .25], [.375, .5]]
    # s1: (.5 A0 - 2 A1)/4 = [[-1, -1], [-1, -1.5]];       (.5 A0 + A1)/4 = [[.5, .5], [.5, 0]]
    exp = run("gradcam", targets=lambda out: torch.stack([out[:, 2], out.sum(1)], 1))
    assert exp.targets is None
    close(exp.scores, t([[-50.75, -46.75], [-54.5, -47.5]]))
    close(
        exp.raw,
        t(
            [
                [[[-1.875, 0.25], [0.375, 0.5]], [[1.125, 0.25], [0.375, 0.5]]],
                [[[-1, -1], [-1, -1.5]], [[0.5, 0.5], [0.5, 0]]],
            ]
        ),
    )


def test_cam_refuses_a_callable_target() -> None:
    with pytest.raises(ValueError, match="class ids"):
        run("cam", targets=lambda out: out[:, 0])


# --------------------------------------------------------------------------- Explanation.maps


def explanation(raw: torch.Tensor, size: tuple[int, int]) -> Explanation:
    b, k = raw.shape[:2]
    return Explanation(
        raw=raw,
        targets=None,
        scores=torch.zeros(b, k, dtype=raw.dtype),
        output=None,
        method="test",
        layer="features",
        input_size=size,
    )


def test_maps_relu_upsample_minmax_by_hand() -> None:
    # raw [[0, 4], [-8, 8]] -> ReLU [[0, 4], [0, 8]]
    # bilinear 2 -> 4, align_corners=False: output index i reads source (i + .5)/2 - .5 =
    # -.25 (clamped to 0), .25, .75, 1.25 (clamped to 1): (a, b) -> (a, .75a + .25b, .25a + .75b, b)
    #   rows: (0, 4) -> (0, 1, 3, 4);  (0, 8) -> (0, 2, 6, 8)
    #   columns the same way: row 1 = .75 (0,1,3,4) + .25 (0,2,6,8) = (0, 1.25, 3.75, 5)
    #                         row 2 = .25 (0,1,3,4) + .75 (0,2,6,8) = (0, 1.75, 5.25, 7)
    # min-max: min 0, max 8 -> divide by 8
    exp = explanation(t([[[[0, 4], [-8, 8]]]]), (4, 4))
    expected = (
        t(
            [
                [0, 1, 3, 4],
                [0, 1.25, 3.75, 5],
                [0, 1.75, 5.25, 7],
                [0, 2, 6, 8],
            ]
        )
        / 8
    )
    close(exp.maps[0, 0], expected)


def test_maps_non_square_upsample_by_hand() -> None:
    # 2x2 -> 2x4: rows keep their height (source row i = (i + .5) - .5 = i), columns as above
    # raw [[2, 6], [-4, 10]] -> ReLU [[2, 6], [0, 10]] -> [[2, 3, 5, 6], [0, 2.5, 7.5, 10]]
    # min 0, max 10
    exp = explanation(t([[[[2, 6], [-4, 10]]]]), (2, 4))
    close(exp.maps[0, 0], t([[0.2, 0.3, 0.5, 0.6], [0, 0.25, 0.75, 1]]))


def test_maps_without_upsampling_by_hand() -> None:
    # Grad-CAM, s0, c2 (input 2x2 = layer 2x2): raw [[-1.875, .25], [.375, .5]]
    # ReLU [[0, .25], [.375, .5]], min 0, max .5: [[0, .5], [.75, 1]]
    exp = run("gradcam")
    close(exp.maps[0, 1], t([[0, 0.5], [0.75, 1]]))
    # s1, c0: raw [[1, 1], [1, 0]] -> [[1, 1], [1, 0]]
    close(exp.maps[1, 1], t([[1, 1], [1, 0]]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("value", [0.0, 3.0, -2.0, 1e-30])
def test_constant_maps_become_zeros_never_nan(value: float, dtype: torch.dtype) -> None:
    # a constant 3x3 map (after ReLU: 0, 3, 0 or 1e-30) upsampled to a non-square 7x5 has a range of 0 or
    # bilinear rounding noise: all zeros, never NaN (torch.equal with zeros: no NaN, the size is 7x5)
    raw = torch.full((1, 1, 3, 3), value, dtype=dtype)
    assert torch.equal(explanation(raw, (7, 5)).maps, torch.zeros(1, 1, 7, 5, dtype=dtype))
    # several maps in one batch are normalised one by one: the non-constant one still spans [0, 1]
    raw = torch.stack([torch.full((2, 2), value), t([[0, 4], [-8, 8]]).float()])[None].to(dtype)
    maps = explanation(raw, (2, 2)).maps
    assert torch.equal(maps[0, 0], torch.zeros(2, 2, dtype=dtype))
    torch.testing.assert_close(maps[0, 1], t([[0, 0.5], [0, 1]]).to(dtype))


def test_normalize_maps_rounding_noise_and_offsets() -> None:
    # a range of 1 ulp-ish on a value of 1 is noise, not structure: all zeros
    noise = t([[[1.0, 1.0 + 2**-52]]])
    assert torch.equal(normalize_maps(noise), torch.zeros_like(noise))
    # a real range on a large offset is kept: [1e6, 1e6 + 1, 1e6 + .5] -> [0, 1, .5]
    close(normalize_maps(t([[[1e6, 1e6 + 1, 1e6 + 0.5]]])), t([[[0, 1, 0.5]]]))
    # normalize_maps alone does not ReLU: [-2, 0, 2] -> [0, .5, 1]
    close(normalize_maps(t([[[-2, 0, 2]]])), t([[[0, 0.5, 1]]]))
