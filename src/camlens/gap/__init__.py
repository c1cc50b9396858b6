"""GAP networks: turn an ordinary classifier into one CAM can explain, and fine-tune its new head.

Zhou et al., "Learning Deep Features for Discriminative Localization", CVPR 2016, sec. 3 ("Weakly-
supervised Object Localization", setup): for AlexNet, VGGnet and GoogLeNet "we remove the fully-connected
layers before the final output and replace them with GAP followed by a fully-connected softmax layer".
For VGGnet "we removed the layers after conv5-3 (i.e., pool5 to prob), resulting in a mapping
resolution of 14 x 14", then "added a convolutional layer of size 3 x 3, stride 1, pad 1 with 1024
units, followed by a GAP layer and a softmax layer", and fine-tuned the network. The result computes

    S_c = sum_k w_k^c * mean_{x,y} f_k(x, y) + b_c        (their eq. 1, with the GAP of sec. 2)

for the new conv's ReLU'd output f, so CAM's map M_c(x, y) = sum_k w_k^c f_k(x, y) (their eq. 2) applies.
The paper's GMP variant (sec. 3.1, GoogLeNet-GMP) replaces the average by a global max.

:func:`convert` (:mod:`camlens.gap.convert`) builds a new :class:`GapNet` around a deep copy of the model's
convolutional backbone (the user's model is never touched, and the two never share parameters);
:func:`finetune` (:mod:`camlens.gap.train`) trains the new head (and optionally the last backbone blocks) on an
image folder or a dataset, with progress bars and a checkpoint that :func:`load_checkpoint`
(:mod:`camlens.gap.checkpoint`) turns back into the model. ``camlens.zoo.load_model(checkpoint)`` loads one
like any model file; this package never imports ``camlens.zoo``.

Examples:
    >>> net = camlens.gap.convert(torchvision.models.vgg16(), num_classes=20)
    >>> history = camlens.gap.finetune(net, "data/train", epochs=5, checkpoint="vgg16_gap.pt")
    >>> camlens.explain(net, x, method="cam").maps
"""

from camlens.gap.checkpoint import checkpoint_needs_trust, is_checkpoint, load_checkpoint, save_checkpoint
from camlens.gap.convert import GapNet, convert
from camlens.gap.train import finetune, run_epoch

__all__ = [
    "GapNet",
    "checkpoint_needs_trust",
    "convert",
    "finetune",
    "is_checkpoint",
    "load_checkpoint",
    "run_epoch",
    "save_checkpoint",
]
