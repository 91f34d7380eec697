"""Whether a finished transfer is a picture at all: not near-constant, not black, not the image
it started from. A run can end that way without an error (a frozen optimizer, weights that swamp
everything), and such a result must not be published as a success.

The thresholds are far from what real results measure (benchmarks/quality.py's six pairs at
256 px, HED's VGG-16, 2026-12-01: a pixel standard deviation of 0.10 to 0.25, a mean change from
the content of 0.14 to 0.24), and they never apply where a legitimate run may stay close to its
start: one of fewer than UNCHANGED_MIN_ITERATIONS iterations, one that started at its optimum, or
a content that is itself flat. The frozen run that prompted them changed no grey level at all.
"""

import torch

from .images import resize

FLAT_STD = 0.01  # a result whose pixels vary less than this (0-1) is near-constant...
FLAT_CONTENT_STD = 0.04  # ...when its content varied more than this
BLACK = 0.02  # a result darker than this everywhere is black
UNCHANGED_MEAN = 0.5 / 255  # a mean change from the start below half a grey level is no change
UNCHANGED_MIN_ITERATIONS = 20


def result_problem(
    result: torch.Tensor, content: torch.Tensor, start: torch.Tensor | None, iterations: int, first_loss: float = 1.0
) -> str | None:
    """What is wrong with a result (1, 3, H, W in [0, 1]), or None. ``start``: the image the
    optimization began from (None for noise, which no result resembles by chance); ``first_loss``:
    its loss, zero when it was already the optimum (style_weight 0 from the content), which is no
    failure to move."""
    result = result.detach().float().cpu()
    content = resize(content.detach().float().cpu(), tuple(result.shape[-2:]))
    if result.max() < BLACK and content.max() >= BLACK:
        return f"the result is black (no pixel above {BLACK:g})"
    spread, content_spread = result.std().item(), content.std().item()
    if spread < FLAT_STD and content_spread >= FLAT_CONTENT_STD:
        return f"the result is nearly one colour (pixel spread {spread:.3g}, the content's {content_spread:.3g})"
    if start is not None and iterations >= UNCHANGED_MIN_ITERATIONS and first_loss > 0:
        change = (result - resize(start.detach().float().cpu(), tuple(result.shape[-2:]))).abs().mean().item()
        if change < UNCHANGED_MEAN:
            return f"the result is the image it started from (mean change {change * 255:.2f} grey levels in {iterations} iterations)"
    return None
