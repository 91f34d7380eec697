"""The network a run uses: loaded with its weights, moved to its device, and a loud warning
when the weights are random (shared by `nst-batch run` and the daemon)."""

import torch
from loguru import logger

from ..engine import Network, WeightsInfo, load_network


def load_model(backbone: str, weights: str, weights_format: str, device: torch.device) -> tuple[Network, WeightsInfo]:
    network, info = load_network(backbone, weights, weights_format)
    if not info.pretrained:
        logger.warning("model weights are RANDOM: results are meaningless (weights: random is for tests only)")
    return network.to(device), info
