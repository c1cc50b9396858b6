"""All registered methods. Importing this package registers them."""

from camlens.methods.activation import CAM, EigenCAM
from camlens.methods.base import CAMMethod, Context
from camlens.methods.gradient import GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM
from camlens.methods.perturbation import AblationCAM, ScoreCAM

__all__ = [
    "CAM",
    "AblationCAM",
    "CAMMethod",
    "Context",
    "EigenCAM",
    "GradCAM",
    "GradCAMPlusPlus",
    "HiResCAM",
    "LayerCAM",
    "ScoreCAM",
    "XGradCAM",
]
