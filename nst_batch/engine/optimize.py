"""stylize(): optimize an image so its features match a content image and its Gram matrices
match one or more style images, coarse to fine, reporting through a callback.

Tensors and parameters in, image and loss history out. Nothing here prints, reads files or
knows about jobs; a caller that wants to stop (a daemon shutting down) returns True from the
callback and gets back a :class:`RunState` to resume from later.
"""

import math
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from itertools import accumulate
from typing import Any

import torch

from ..errors import DivergedError, InputError
from .features import FeatureExtractor, Network, Speed
from .images import fit_long_side, keep_colors, luminance, resize, resize_long_side
from .losses import ContentLoss, StyleLoss, StyleTransferLoss
from .params import StyleParams


@dataclass(frozen=True)
class LossRecord:
    """One iteration's losses, each as it enters the total (weight applied)."""

    iteration: int
    content: float
    style: float
    tv: float
    total: float
    elapsed_s: float


@dataclass(frozen=True)
class EarlyStop:
    """Why a scale ended before its iteration count: the loss improved less than ``tol``."""

    iteration: int
    scale: int
    improvement: float
    window: int
    tol: float

    def describe(self) -> str:
        return (
            f"early stop at iteration {self.iteration} (scale {self.scale + 1}): the loss improved "
            f"{self.improvement:.2e} over the last {self.window} iterations, below early_stop_tol={self.tol:g}"
        )


@dataclass
class RunState:
    """All a run needs to continue where it stopped: give it back as ``stylize(resume=...)``.

    Tensors are on the CPU, so a state can be saved with ``torch.save(state.to_dict())``.
    """

    seed: int
    scale: int  # index of the scale in progress
    iteration: int  # iterations done, all scales together
    image: torch.Tensor
    optimizer: dict[str, Any]
    history: list[LossRecord] = field(default_factory=list)
    scale_starts: list[int] = field(default_factory=list)
    early_stops: list[EarlyStop] = field(default_factory=list)
    elapsed_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            **{k: getattr(self, k) for k in ("seed", "scale", "iteration", "image", "optimizer", "elapsed_s")},
            "scale_starts": list(self.scale_starts),
            "history": [tuple(vars(r).values()) for r in self.history],
            "early_stops": [vars(e) for e in self.early_stops],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunState":
        return cls(
            **{k: data[k] for k in ("seed", "scale", "iteration", "image", "optimizer", "elapsed_s", "scale_starts")},
            history=[LossRecord(*row) for row in data["history"]],
            early_stops=[EarlyStop(**e) for e in data["early_stops"]],
        )


@dataclass(frozen=True)
class Progress:
    """What the callback sees after each iteration."""

    iteration: int  # 1-based, all scales together
    total_iterations: int  # upper bound: early stops may end sooner
    scale: int
    scales: int
    losses: LossRecord
    frame: torch.Tensor | None  # the current image (CPU), every ``frame_every`` iterations
    snapshot: Callable[[], RunState]  # the state to resume from; costs a copy, so call it when needed


@dataclass(frozen=True)
class Result:
    image: torch.Tensor  # (1, 3, H, W) in [0, 1], on the CPU
    history: list[LossRecord]
    scale_starts: list[int]  # first iteration of each scale
    early_stops: list[EarlyStop]
    seed: int
    interrupted: bool = False
    state: RunState | None = None  # set when interrupted


Callback = Callable[[Progress], bool | None]


def stylize(
    network: Network,
    content: torch.Tensor,
    styles: Sequence[torch.Tensor],
    params: StyleParams,
    *,
    init_image: torch.Tensor | None = None,
    callback: Callback | None = None,
    resume: RunState | None = None,
    speed: Speed = Speed(),
) -> Result:
    """Run a style transfer. ``content`` and ``styles`` are (1, 3, H, W) images in [0, 1].

    ``init_image`` is required when ``params.init`` is a path (the caller reads the file).
    ``callback`` is called after every iteration; returning True stops the run, and the
    result then carries the state to resume from. ``speed`` runs the network in reduced
    precision or channels-last layout (losses stay in fp32).
    """
    if not styles:
        raise ValueError("stylize needs at least one style image")
    if params.init not in ("content", "noise") and init_image is None:
        raise ValueError(f"init={params.init!r} names an image: pass it as init_image")
    blend = params.blend_weights(len(styles))
    device = network.device
    layers = (*params.content_layer_names, *params.style_layer_names)
    extractor = FeatureExtractor(network, layers, params.pooling, speed)
    state = resume or RunState(
        seed=params.seed if params.seed is not None else secrets.randbelow(2**31),
        scale=0, iteration=0, image=torch.empty(0), optimizer={},
    )
    sizes = params.scale_sizes
    _check_short_sides(extractor, content, styles, params, sizes[0])
    started = time.perf_counter() - state.elapsed_s
    for scale in range(state.scale, len(sizes)):
        content_now = resize_long_side(content, sizes[scale]).to(device)
        if scale != state.scale or resume is None:
            image = _starting_image(scale, state, content_now, init_image, params)
            state = replace(state, scale=scale, optimizer={}, scale_starts=[*state.scale_starts, state.iteration])
        else:
            image = state.image.to(device)
        loss_fn = _loss(extractor, content_now, styles, params, blend, sizes[scale])
        run = _ScaleRun(extractor, loss_fn, image, params, state, started, len(sizes))
        state, stop = run.iterate(callback)
        if stop:
            return _result(state, content, params, interrupted=True)
        resume = None
    return _result(state, content, params, interrupted=False)


def _check_short_sides(
    extractor: FeatureExtractor, content: torch.Tensor, styles: Sequence[torch.Tensor], params: StyleParams, size: int
) -> None:
    """A very wide image at a small size would shrink to nothing before the deepest layer."""
    style_size = max(16, round(size * params.style_scale))
    named = [("content", content, size), *((f"style {i + 1}", s, style_size) for i, s in enumerate(styles))]
    for what, image, long_side in named:
        short = min(fit_long_side(*image.shape[-2:], long_side))
        if short < extractor.min_side:
            raise InputError(
                f"the {what} image is too narrow: at {long_side} px on its long side its short side is {short} px, "
                f"but the layers up to {extractor.names[-1]} need {extractor.min_side} px: raise image_size "
                f"(or style_scale), use fewer scales, or crop it"
            )


def _starting_image(
    scale: int, state: RunState, content: torch.Tensor, init_image: torch.Tensor | None, params: StyleParams
) -> torch.Tensor:
    shape = tuple(content.shape[-2:])
    if scale > 0:
        return resize(state.image.to(content.device), shape)
    if params.init == "content":
        return content.clone()
    if params.init == "noise":
        generator = torch.Generator().manual_seed(state.seed)
        return torch.rand((1, 3, *shape), generator=generator).to(content.device)
    return resize(init_image.to(content.device), shape)


def _loss(
    extractor: FeatureExtractor,
    content: torch.Tensor,
    styles: Sequence[torch.Tensor],
    params: StyleParams,
    blend: Sequence[float],
    size: int,
) -> StyleTransferLoss:
    with torch.no_grad():
        content_features = extractor(content)
        style_size = max(16, round(size * params.style_scale))
        style_images = [resize_long_side(s, style_size).to(content.device) for s in styles]
        if params.preserve_colors:
            style_images = [luminance(s) for s in style_images]
        style_features = [extractor(s) for s in style_images]
    return StyleTransferLoss(
        content={name: ContentLoss(content_features[name]) for name in params.content_layer_names},
        style={name: StyleLoss.blended([f[name] for f in style_features], blend) for name in params.style_layer_names},
        layer_weights=params.layer_weights,
        content_weight=params.content_weight,
        style_weight=params.style_weight,
        tv_weight=params.tv_weight,
    )


class _ScaleRun:
    """The optimizer loop at one scale."""

    def __init__(self, extractor, loss_fn, image, params: StyleParams, state: RunState, started: float, scales: int):
        self.extractor, self.loss_fn, self.params, self.state = extractor, loss_fn, params, state
        self.started, self.scales = started, scales
        # Callers may pass any layout (a decoded image is often a transposed view); L-BFGS
        # flattens the parameter with .view(), which needs contiguous memory.
        self.image = image.detach().clone(memory_format=torch.contiguous_format).requires_grad_(True)
        self.optimizer = _optimizer(params, self.image)
        if state.optimizer:
            self.optimizer.load_state_dict(state.optimizer)
        self.history = list(state.history)
        self.early_stops = list(state.early_stops)
        self.iteration = state.iteration
        self.scale_start = state.scale_starts[-1]
        self.best = list(accumulate((r.total for r in self.history[self.scale_start :]), min))

    def closure(self) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        total, terms = self.loss_fn(self.image, self.extractor(self.image))
        total.backward()
        self.terms = torch.stack([terms["content"], terms["style"], terms["tv"], total]).detach()
        return total

    def done(self) -> bool:
        """The scale's iterations are spent, or it stopped early (an early stop ends its scale)."""
        stopped = bool(self.early_stops) and self.early_stops[-1].scale == self.state.scale
        return stopped or self.iteration - self.scale_start >= self.params.iterations

    def iterate(self, callback: Callback | None) -> tuple[RunState, bool]:
        total_iterations = self.params.iterations * self.scales
        while not self.done():
            self.optimizer.step(self.closure)
            self.iteration += 1
            record = LossRecord(self.iteration, *self.terms.tolist(), time.perf_counter() - self.started)
            if not math.isfinite(record.total):
                raise DivergedError(
                    f"the loss became {record.total} at iteration {self.iteration}: lower lr or the loss weights"
                    + (" (or use optimizer: lbfgs)" if self.params.optimizer == "adam" else "")
                )
            self.history.append(record)
            self.best.append(min(self.best[-1], record.total) if self.best else record.total)
            early_stop = self._early_stop()
            if early_stop:  # recorded before the callback, so a snapshot taken there knows it
                self.early_stops.append(early_stop)
            if callback is not None:
                every = self.params.frame_every
                frame = self._picture() if every and self.iteration % every == 0 else None
                progress = Progress(
                    self.iteration, total_iterations, self.state.scale, self.scales, record, frame, self.snapshot
                )
                if callback(progress):
                    return self.snapshot(), True
        # the next scale starts a fresh optimizer: copying this one's state would be wasted
        return self.snapshot(with_optimizer=False), False

    def _early_stop(self) -> EarlyStop | None:
        window, tol = self.params.early_stop_window, self.params.early_stop_tol
        if not tol or len(self.best) <= window:
            return None
        before, now = self.best[-1 - window], self.best[-1]
        improvement = (before - now) / abs(before) if before else 0.0
        if improvement >= tol:
            return None
        return EarlyStop(self.iteration, self.state.scale, improvement, window, tol)

    def _picture(self) -> torch.Tensor:
        return self.image.detach().clamp(0, 1).cpu()

    def snapshot(self, with_optimizer: bool = True) -> RunState:
        return replace(
            self.state,
            iteration=self.iteration,
            image=self.image.detach().cpu().clone(),  # unclamped: a resumed run continues exactly
            optimizer=_to_cpu(self.optimizer.state_dict()) if with_optimizer else {},
            history=list(self.history),
            early_stops=list(self.early_stops),
            elapsed_s=time.perf_counter() - self.started,
        )


def _optimizer(params: StyleParams, image: torch.Tensor) -> torch.optim.Optimizer:
    if params.optimizer == "adam":
        return torch.optim.Adam([image], lr=params.learning_rate)
    # One closure evaluation per step, so one iteration costs one forward and backward pass.
    return torch.optim.LBFGS([image], lr=params.learning_rate, max_iter=1, history_size=params.lbfgs_history)


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    return value


def _result(state: RunState, content: torch.Tensor, params: StyleParams, interrupted: bool) -> Result:
    image = state.image.clamp(0, 1)
    if params.preserve_colors:
        image = keep_colors(image, content)
    return Result(
        image=image,
        history=state.history,
        scale_starts=state.scale_starts,
        early_stops=state.early_stops,
        seed=state.seed,
        interrupted=interrupted,
        state=state if interrupted else None,
    )
