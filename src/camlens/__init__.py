"""camlens: where in the image is a vision model looking, and why did it say that?

Class activation maps (CAM, Grad-CAM and its family, Score-CAM, Ablation-CAM, Eigen-CAM),
backpropagation-based maps (saliency, guided backprop, Integrated Gradients, SmoothGrad, LRP) and
perturbation-based ones (LIME, occlusion, RISE), for CNNs and vision transformers, as one pipeline with
one result object, :class:`Explanation`. Any target concept: classes, a detection (:class:`BoxScore`), a
segmentation region (:class:`RegionScore`), an embedding's similarity (:class:`Similarity`), or any callable
on the model's output; models with several inputs take a tuple or dict (``image=`` names the image batch).

Examples:
    >>> import camlens
    >>> exp = camlens.explain(model, x, method="gradcam", targets="top5")
    >>> exp.maps  # (B, 5, H, W) in [0, 1]
"""

from camlens.api import explain
from camlens.capture import LayerRef, find_layer, layer_names
from camlens.explanation import Explanation, normalize_maps
from camlens.methods import (
    CAM,
    LIME,
    LRP,
    RISE,
    AblationCAM,
    CAMMethod,
    Deconvnet,
    EigenCAM,
    GradCAM,
    GradCAMPlusPlus,
    GuidedBackprop,
    GuidedGradCAM,
    HiResCAM,
    IntegratedGradients,
    LayerCAM,
    LRPEpsilonAlpha2Beta1,
    LRPEpsilonGammaBox,
    LRPEpsilonPlus,
    LRPEpsilonPlusFlat,
    Occlusion,
    Saliency,
    ScoreCAM,
    SmoothGrad,
    SmoothGradGuided,
    XGradCAM,
)
from camlens.registry import get_method, methods
from camlens.tasks import BoxScore, ClassDetections, RegionScore, Similarity

__version__ = "0.1.0"

__all__ = [
    "CAM",
    "AblationCAM",
    "BoxScore",
    "CAMMethod",
    "ClassDetections",
    "Deconvnet",
    "EigenCAM",
    "Explanation",
    "GradCAM",
    "GradCAMPlusPlus",
    "GuidedBackprop",
    "GuidedGradCAM",
    "HiResCAM",
    "IntegratedGradients",
    "LayerCAM",
    "LayerRef",
    "LRP",
    "LRPEpsilonAlpha2Beta1",
    "LRPEpsilonGammaBox",
    "LRPEpsilonPlus",
    "LRPEpsilonPlusFlat",
    "LIME",
    "Occlusion",
    "RISE",
    "RegionScore",
    "Saliency",
    "ScoreCAM",
    "SmoothGrad",
    "Similarity",
    "SmoothGradGuided",
    "XGradCAM",
    "explain",
    "find_layer",
    "get_method",
    "layer_names",
    "methods",
    "normalize_maps",
]
