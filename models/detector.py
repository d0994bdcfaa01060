"""A small object detector for CPU-sized images: torchvision's FCOS (anchor-free, one box per feature-map
point) on a small convolutional backbone of its own, with no downloaded weights. In train mode it takes
(images, targets) and returns its named losses; in eval mode, images alone, and returns one dict of
boxes, scores and labels per image, as every torchvision detector does."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torchvision.models.detection import FCOS
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.fcos import FCOSHead


class Backbone(nn.Module):
    """Conv-BN-ReLU stages, each halving the resolution; the last `levels` stages are the feature maps
    FCOS predicts from, each brought to `width` channels by a 1x1 convolution (FCOS needs one width)."""

    def __init__(self, in_channels: int, width: int, stages: int, levels: int) -> None:
        super().__init__()
        self.out_channels, self.levels = width, levels
        chans = [in_channels] + [min(width * 2 ** max(i - 1, 0), 4 * width) for i in range(stages)]
        self.stages = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(chans[i], chans[i + 1], 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(chans[i + 1]),
                nn.ReLU(inplace=True),
                nn.Conv2d(chans[i + 1], chans[i + 1], 3, padding=1, bias=False),
                nn.BatchNorm2d(chans[i + 1]),
                nn.ReLU(inplace=True),
            )
            for i in range(stages)
        )
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in chans[-levels:])

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        maps = []
        for stage in self.stages:
            x = stage(x)
            maps.append(x)
        return OrderedDict(
            (str(i), conv(m))
            for i, (conv, m) in enumerate(zip(self.lateral, maps[-self.levels :], strict=True))
        )


class Detector(nn.Module):
    def __init__(
        self,
        num_classes: int,
        image_size: int,
        in_channels: int = 3,
        width: int = 32,
        stages: int = 3,
        levels: int = 2,
        head_convs: int = 2,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_img: int = 20,
    ) -> None:
        """`stages` halvings of the image, the last `levels` of them predicted from (stride 2^stages the
        coarsest); `head_convs` convolutions of `width` channels in each of FCOS's two head branches."""
        super().__init__()
        if not 1 <= levels <= stages:
            raise ValueError(
                f"the detector needs 1 <= levels <= stages, got levels={levels}, stages={stages}"
            )
        backbone = Backbone(in_channels, width, stages, levels)
        # One point per feature-map cell, its size the map's stride (FCOS's convention; it sizes the
        # centre region that counts as inside a box, and which level takes which box sizes).
        strides = tuple((2**s,) for s in range(stages - levels + 1, stages + 1))
        self.net = FCOS(
            backbone,
            num_classes,
            # The data is normalized already, and images are not resized: nothing is scaled up.
            min_size=image_size,
            max_size=image_size,
            image_mean=[0.0] * in_channels,
            image_std=[1.0] * in_channels,
            size_divisible=2**stages,
            anchor_generator=AnchorGenerator(strides, ((1.0,),) * levels),
            head=FCOSHead(width, 1, num_classes, num_convs=head_convs),
            score_thresh=score_thresh,
            nms_thresh=nms_thresh,
            detections_per_img=detections_per_img,
            topk_candidates=100,
        )

    def shard_blocks(self) -> list[nn.Module]:
        """The backbone's stages: FSDP's units, activation checkpointing's (setup/sharding.py)."""
        return list(self.net.backbone.stages)

    def forward(self, images: torch.Tensor, targets: list[dict[str, torch.Tensor]] | None = None):
        """Train mode: (images [B, C, H, W], targets) -> {"classification", "bbox_regression",
        "bbox_ctrness"} losses. Eval mode: images -> [{"boxes", "scores", "labels"}] one per image."""
        return self.net(list(images), targets)
