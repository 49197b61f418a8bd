"""The optional motion stream's input: stacked Farneback optical-flow fields (OpenCV).

TSN (the reference features) uses TV-L1 flow; Farneback is what OpenCV ships, so features made here
are close to, not the same as, the released ones.
"""

from __future__ import annotations

import numpy as np

from oad.video.backbones import IMAGENET_STD

# TSN feeds flow as images 128 + flow * 128 / 20 (clipped) normalised by mean 0.5, std 0.226 (the mean
# ImageNet std): in flow units that is flow / (40 * 0.226), clipped at +-20 pixels.
FLOW_BOUND = 20.0
FLOW_SCALE = 1.0 / (2 * FLOW_BOUND * float(np.mean(IMAGENET_STD)))


def stacked_flow(frames: np.ndarray) -> np.ndarray:
    """Farneback flow of consecutive frames, stacked as TSN does.

    Args:
        frames: ``(K + 1, h, w, 3)`` RGB uint8.

    Returns:
        ``(2K, h, w)`` float32 ``[x_1, y_1, ..., x_K, y_K]``, clipped at +-20 pixels and scaled to
        TSN's flow input range.
    """
    import cv2

    gray = [cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY) for f in frames]
    fields = [
        cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0)  # (h, w, 2)
        for a, b in zip(gray[:-1], gray[1:])
    ]
    flow = np.stack(fields).transpose(0, 3, 1, 2)  # (K, h, w, 2) -> (K, 2, h, w)
    flow = np.clip(flow, -FLOW_BOUND, FLOW_BOUND) * FLOW_SCALE
    return flow.reshape(-1, *flow.shape[2:]).astype(np.float32)  # (K, 2, h, w) -> (2K, h, w)


# ---------------------------------------------------------------------------------------------------
# The extractor
# ---------------------------------------------------------------------------------------------------


