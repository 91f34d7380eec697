"""How much memory and time a run needs, predicted from its shape alone (pure: no device here).

A run's peak is modelled as

    constant + exact + per_activation x activations

- ``exact``: what can be counted: the image and its gradient, the copies repairs keep (the step
  before and the best image), the optimizer's state (Adam's two
  moments; L-BFGS's history of 2 x history_size image-sized vectors), the content and style
  targets;
- ``activations``: the feature maps of every layer up to the deepest one a loss needs, which
  autograd keeps for the backward pass;
- ``constant`` and ``per_activation``: the framework's workspace and how much of the activations
  (and backward buffers) it really keeps; fitted on the device from probe runs at start-up and
  from every measured peak since (``fit_model``).

A tiled run (``tile``) keeps the activations of its largest tile's crop, not the whole image's;
its image-sized tensors stay. Multi-scale runs need what their largest scale needs.

Time per iteration is modelled the same way: a constant plus a cost per byte of ``work``, the
activations one iteration computes. Untiled that is the activations; tiled, every crop's (halos
overlap), and again for the first pass, a forward pass alone (FORWARD_SHARE of a forward and
backward pass).
"""

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from ..engine import StyleParams
from ..engine.images import fit_long_side
from ..engine.layers import LAYERS
from ..engine.tiling import Tiling

FLOAT_BYTES = 4
GIB = 1 << 30
# A forward pass without autograd costs this share of a forward and backward pass (measured:
# docs/benchmarks.md, "Tiling"); a tiled iteration runs one before its gradient pass.
FORWARD_SHARE = 0.35

_VGG_WIDTHS = (64, 128, 256, 512, 512)
# ResNet-18: (channels, downsampling factor, tensors autograd keeps per output element)
_RESNET_STAGES = {
    "conv1": (64, 2, 2),  # conv, batch norm (the ReLU is in place)
    "pool1": (64, 4, 1),
    "layer1": (64, 4, 10),  # two blocks of conv, bn, conv, bn, add
    "layer2": (128, 8, 12),  # ...and the first block's strided shortcut conv and bn
    "layer3": (256, 16, 12),
    "layer4": (512, 32, 12),
}


def layer_shape(backbone: str, layer: str, height: int, width: int) -> tuple[int, int, int]:
    """(channels, height, width) of a layer's output for an input of height x width."""
    if backbone == "resnet18":
        channels, factor, _ = _RESNET_STAGES[layer]
        return channels, max(1, -(-height // factor)), max(1, -(-width // factor))  # strided convs round up
    block = int(layer[4] if layer.startswith("pool") else layer.split("_")[0][-1])
    halvings = block if layer.startswith("pool") else block - 1
    return _VGG_WIDTHS[block - 1], height >> halvings, width >> halvings


def activation_elements(backbone: str, deepest: str, height: int, width: int) -> int:
    """Elements of every feature map up to and including ``deepest``."""
    names = LAYERS[backbone]
    total = 0
    for name in names[: names.index(deepest) + 1]:
        channels, h, w = layer_shape(backbone, name, height, width)
        kept = _RESNET_STAGES[name][2] if backbone == "resnet18" else 1
        total += kept * channels * h * w
    return total


@dataclass(frozen=True)
class Need:
    """What a run needs at its largest scale, before the device's coefficients are applied."""

    exact_bytes: int
    activation_bytes: int  # held at once
    height: int
    width: int
    work_bytes: int | None = None  # computed per iteration; None: activation_bytes (untiled)

    @property
    def work(self) -> int:
        return self.activation_bytes if self.work_bytes is None else self.work_bytes


def run_need(params: StyleParams, content_size: tuple[int, int], n_styles: int) -> Need:
    """The needs of a run of ``params`` on a content image of (width, height) pixels.

    An unknown size (0, 0) is taken as square: the most a given image_size can need.
    """
    width, height = content_size if all(content_size) else (1, 1)
    height, width = fit_long_side(height, width, params.image_size)
    layers = (*params.content_layer_names, *params.style_layer_names)
    names = LAYERS[params.backbone]
    deepest = max(layers, key=names.index)
    tiling = Tiling.of(params)
    tiled = tiling.splits(height, width)
    pixels = 3 * height * width * FLOAT_BYTES
    # each scale starts a fresh L-BFGS: its history is at most the most iterations of one scale
    history = min(params.lbfgs_history, max(params.iterations_at(scale) for scale in range(params.scales)))
    optimizer = 2 * pixels if params.optimizer == "adam" else (2 * history + 4) * pixels
    content_targets = sum(_elements(params.backbone, name, height, width) for name in params.content_layer_names)
    style_targets = sum(layer_shape(params.backbone, name, 1, 1)[0] ** 2 for name in params.style_layer_names)
    style_size = params.style_long_side(params.image_size)
    style_images = n_styles * 3 * style_size * style_size
    # the image and its gradient; the step before and the best image so far (repairs); the average (ema)
    kept = (4 + (1 if params.ema else 0)) * pixels
    if tiled:
        # Passing image-sized tensors: a step's difference and the optimizer's temporaries; with
        # a total variation, its copy of the image, its gradient and differences. Untiled, the fit
        # of per_activation takes them in (they grow with the pixels as activations do); tiled,
        # the activations are a crop's, so they are counted (measured: docs/benchmarks.md).
        kept += (2 + (4 if params.tv_weight else 0)) * pixels
    exact = kept + optimizer + FLOAT_BYTES * (content_targets + style_targets + style_images)
    if not tiled:
        activations = FLOAT_BYTES * activation_elements(params.backbone, deepest, height, width)
        return Need(exact, activations, height, width)
    crop = tiling.largest_crop(height, width)
    activations = FLOAT_BYTES * activation_elements(params.backbone, deepest, *crop)
    rows, cols = (Counter(s.crop_length for s in tiling.spans(n)) for n in (height, width))
    work = sum(m * n * activation_elements(params.backbone, deepest, h, w) for h, m in rows.items() for w, n in cols.items())
    return Need(exact, activations, height, width, int(FLOAT_BYTES * work * (1 + FORWARD_SHARE)))


def _elements(backbone: str, layer: str, height: int, width: int) -> int:
    channels, h, w = layer_shape(backbone, layer, height, width)
    return channels * h * w


@dataclass(frozen=True)
class Sample:
    """One measured run (or probe): its needs, its peak memory and its seconds per iteration."""

    need: Need
    peak_bytes: int
    seconds_per_iteration: float


@dataclass(frozen=True)
class MemoryModel:
    constant_bytes: float = 256 * 2**20
    per_activation: float = 2.0
    margin: float = 0.10  # predictions are padded by this fraction
    seconds_constant: float = 0.0
    seconds_per_activation_byte: float = 2e-9  # a CPU-like guess until measured

    def peak(self, need: Need) -> int:
        raw = self.constant_bytes + need.exact_bytes + self.per_activation * need.activation_bytes
        return int(raw * (1 + self.margin))

    def shared_bytes(self) -> int:
        """What every run pays whatever its size (the runtime, the network): a batch pays it once."""
        return int(max(0.0, self.constant_bytes) * (1 + self.margin))

    def seconds_per_iteration(self, need: Need) -> float:
        return self.seconds_constant + self.seconds_per_activation_byte * need.work


def fit_model(samples: Sequence[Sample], prior: MemoryModel = MemoryModel()) -> MemoryModel:
    """Coefficients that explain the measured samples, never predicting below any of them.

    Two or more samples of different sizes give a least-squares line (constant, per activation
    byte); one sample keeps the prior's constant. The constant is then raised until the line is
    at or above every sample, so the model errs on the side of fitting.
    """
    if not samples:
        return prior
    peak_constant, peak_slope = _line(
        [s.need.activation_bytes for s in samples],
        [s.peak_bytes - s.need.exact_bytes for s in samples],
        prior.constant_bytes,
        prior.per_activation,
    )
    peak_constant = max(
        [peak_constant] + [s.peak_bytes - s.need.exact_bytes - peak_slope * s.need.activation_bytes for s in samples]
    )
    timed = [s for s in samples if s.seconds_per_iteration > 0]
    time_constant, time_slope = _line(
        [s.need.work for s in timed],
        [s.seconds_per_iteration for s in timed],
        prior.seconds_constant,
        prior.seconds_per_activation_byte,
    )
    return MemoryModel(max(0.0, peak_constant), peak_slope, prior.margin, max(0.0, time_constant), time_slope)


def _line(xs: Sequence[float], ys: Sequence[float], prior_intercept: float, prior_slope: float) -> tuple[float, float]:
    """Least squares y = a + b x with b >= 0; with a single distinct x, keep the prior intercept."""
    if not xs:
        return prior_intercept, prior_slope
    n = len(xs)
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    spread = sum((x - mean_x) ** 2 for x in xs)
    if spread <= 1e-9 * max(1.0, mean_x**2):
        return prior_intercept, max(0.0, (mean_y - prior_intercept) / mean_x) if mean_x else prior_slope
    slope = max(0.0, sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / spread)
    return mean_y - slope * mean_x, slope


def run_seconds(params: StyleParams, content_size: tuple[int, int], n_styles: int, model: MemoryModel) -> float:
    """Predicted seconds for the whole run: each scale's iterations at that scale's cost."""
    return sum(
        params.iterations_at(scale)
        * model.seconds_per_iteration(run_need(params.with_overrides({"image_size": size}), content_size, n_styles))
        for scale, size in enumerate(params.scale_sizes)
    )


# --- what to do with a run that cannot fit even alone ---------------------------------------

POLICIES = ("auto", "tile", "lbfgs_history", "adam", "downscale", "fail")
# auto: the first of these that fits; the optimizer's changes, and a smaller image, keep the largest
# tile that fits with them
AUTO = ("tile", "lbfgs_history", "adam", "downscale")
MIN_TILE = 64
MIN_AUTO_HISTORY = 10  # L-BFGS with fewer pairs than this is barely L-BFGS: auto prefers Adam


@dataclass(frozen=True)
class RunFit:
    """A run's parameters changed so it fits (``changes`` and a warning), or why it cannot."""

    params: StyleParams | None
    warning: str | None = None
    refusal: str | None = None


def fit_run(
    params: StyleParams, content_size: tuple[int, int], n_styles: int, model: MemoryModel, budget: int, policy: str
) -> RunFit:
    """Apply the config's ``too_big`` policy to a run that needs more than ``budget`` alone."""
    needed = model.peak(run_need(params, content_size, n_styles))
    if needed <= budget:
        return RunFit(params)
    options = _options(params, content_size, n_styles, model, budget, tiled=policy == "auto")
    chosen = next((name for name in AUTO if _acceptable(name, options)), None) if policy == "auto" else policy
    if chosen in options:
        changed = params.with_overrides(options[chosen])
        change = ", ".join(f"{k}: {getattr(params, k)} -> {v}" for k, v in options[chosen].items())
        return RunFit(changed, warning=f"needs {_gib(needed)} alone, the budget is {_gib(budget)}: changed {change} to fit")
    hints = "; ".join(", ".join(f"{k}: {v}" for k, v in change.items()) for change in options.values())
    return RunFit(
        None,
        refusal=f"needs {_gib(needed)}, the memory budget is {_gib(budget)}"
        + (f"; it would fit with {hints}" if hints else "; it cannot fit on this device even at 64 px")
        + " (or raise scheduler.memory_budget)",
    )


def _options(params: StyleParams, content_size, n_styles, model: MemoryModel, budget: int, tiled: bool) -> dict[str, dict]:
    """For each policy that can make the run fit, the smallest change that does; with ``tiled``,
    the optimizer's changes are made to a tiled run (the tile is then the largest that fits)."""
    def fits(candidate: StyleParams) -> bool:
        return model.peak(run_need(candidate, content_size, n_styles)) <= budget

    options = {}
    tile = _largest_tile(params, content_size, fits)
    if tile is not None:
        options["tile"] = {"tile": tile}
    tiles = _tiles(params, content_size) if tiled else []
    smallest = {"tile": tiles[-1]} if tiles else {}
    if params.optimizer == "lbfgs":
        base = params.with_overrides(smallest)
        history = _largest(1, params.lbfgs_history, lambda h: fits(base.with_overrides({"lbfgs_history": h})))
        if history is not None:
            options["lbfgs_history"] = _with_tile({"lbfgs_history": history}, params, content_size, fits, smallest)
        if fits(base.with_overrides({"optimizer": "adam"})):
            options["adam"] = _with_tile({"optimizer": "adam"}, params, content_size, fits, smallest)
    def fits_at(size: int) -> bool:  # with ``tiled``, whole or with the smallest tile
        sized = params.with_overrides({"image_size": size})
        least = _tiles(sized, content_size)[-1:] if tiled else []
        return fits(sized) or bool(least) and fits(sized.with_overrides({"tile": least[0]}))

    size = _largest(64, params.image_size, fits_at)
    if size is not None:
        sized = params.with_overrides({"image_size": size})
        tile = None if fits(sized) else _largest_tile(sized, content_size, fits)
        options["downscale"] = {"image_size": size, **({"tile": tile} if tile else {})}
    return options


def _acceptable(name: str, options: dict[str, dict]) -> bool:
    """Whether ``auto`` takes this option: a history too short to be L-BFGS's is Adam's turn."""
    return name in options and options[name].get("lbfgs_history", MIN_AUTO_HISTORY) >= MIN_AUTO_HISTORY


def _with_tile(change: dict, params: StyleParams, content_size, fits, smallest: dict) -> dict:
    """``change``, and with ``smallest`` (a tiled search) the largest tile that fits with it."""
    if not smallest:
        return change
    changed = params.with_overrides(change)
    return {**change, "tile": _largest_tile(changed, content_size, fits) or smallest["tile"]}


def _tiles(params: StyleParams, content_size: tuple[int, int]) -> list[int]:
    """The tiles worth trying, largest first: for each number of tiles along the long side, the
    smallest tile that makes that many (a larger one would only add to a crop's size). None is
    smaller than MIN_TILE or twice the halo, where the halos already make an iteration more than 4x
    the work (a sidecar's ``tile`` may still ask for one)."""
    width, height = content_size if all(content_size) else (1, 1)
    long_side = max(fit_long_side(height, width, params.image_size))
    tiling = Tiling.of(params)  # its halo and stride: they do not depend on the tile
    steps = -(-long_side // tiling.align)  # the long side in strides
    tiles = {tiling.align * -(-steps // n) for n in range(2, steps + 1)}
    return sorted((tile for tile in tiles if tile >= max(MIN_TILE, 2 * tiling.halo)), reverse=True)


def _largest_tile(params: StyleParams, content_size, fits) -> int | None:
    """The largest tile with which the run fits, if any does."""
    return next((tile for tile in _tiles(params, content_size) if fits(params.with_overrides({"tile": tile}))), None)


def _largest(low: int, high: int, ok) -> int | None:
    """The largest integer in [low, high] for which the monotone ``ok`` holds."""
    if not ok(low):
        return None
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if ok(middle) else (low, middle - 1)
    return low


def _gib(n_bytes: float) -> str:
    return f"{n_bytes / GIB:.2f} GiB"
