"""The style-transfer engine: a library with no knowledge of files, queues or services.

    network, info = load_network("vgg19", "imagenet")
    result = stylize(network.to(device), content, [style], StyleParams(iterations=300), callback=...)
"""

from .devices import resolve_device
from .features import FeatureExtractor, Network, Speed
from .optimize import (
    EarlyStop,
    LossRecord,
    Member,
    Progress,
    Repair,
    Result,
    RunState,
    batch_key,
    stylize,
    stylize_batch,
)
from .params import StyleParams
from .weights import WeightsInfo, imagenet_file, imagenet_url, load_network

__all__ = [
    "EarlyStop", "FeatureExtractor", "LossRecord", "Member", "Network", "Progress", "Repair", "Result", "RunState", "Speed",
    "StyleParams", "WeightsInfo", "batch_key", "imagenet_file", "imagenet_url", "load_network", "resolve_device",
    "stylize", "stylize_batch",
]
