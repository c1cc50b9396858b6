"""All registered methods. Importing this package registers them."""

from camlens.methods.activation import CAM, EigenCAM
from camlens.methods.base import CAMMethod, Context
from camlens.methods.gradient import GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM
from camlens.methods.guided import Deconvnet, GuidedBackprop, GuidedGradCAM, Saliency
from camlens.methods.integrated import IntegratedGradients, SmoothGrad, SmoothGradGuided
from camlens.methods.lrp import (
    LRP,
    LRPEpsilonAlpha2Beta1,
    LRPEpsilonGammaBox,
    LRPEpsilonPlus,
    LRPEpsilonPlusFlat,
)
from camlens.methods.perturbation import AblationCAM, ScoreCAM
from camlens.methods.perturbation_input import LIME, RISE, Occlusion

__all__ = [
    "CAM",
    "AblationCAM",
    "CAMMethod",
    "Context",
    "Deconvnet",
    "EigenCAM",
    "GradCAM",
    "GradCAMPlusPlus",
    "GuidedBackprop",
    "GuidedGradCAM",
    "HiResCAM",
    "IntegratedGradients",
    "LayerCAM",
    "LRP",
    "LRPEpsilonAlpha2Beta1",
    "LRPEpsilonGammaBox",
    "LRPEpsilonPlus",
    "LRPEpsilonPlusFlat",
    "LIME",
    "Occlusion",
    "RISE",
    "Saliency",
    "ScoreCAM",
    "SmoothGrad",
    "SmoothGradGuided",
    "XGradCAM",
]
