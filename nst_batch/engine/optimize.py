"""stylize(): optimize an image so its features match a content image and its Gram matrices
match one or more style images, coarse to fine, reporting through a callback.

stylize_batch() runs several such transfers of the same image shape through shared forward
passes: the network sees them as one batch, while each keeps its own losses, optimizer (an
L-BFGS history and step of its own), early stop and callback, so each ends as it would alone.

Tensors and parameters in, image and loss history out. Nothing here prints, reads files or
knows about jobs; a caller that wants to stop (a daemon shutting down) returns True from the
callback and gets back a :class:`RunState` to resume from later.
"""

import math
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from itertools import accumulate
from typing import Any

import torch

from ..util.errors import DivergedError, InputError
from .features import FeatureExtractor, Network, Speed
from .images import FRAME_LONG_SIDE, fit_long_side, keep_colors, luminance, resize, resize_long_side, shrink_long_side
from .losses import ContentLoss, Moments, StyleLoss, StyleTransferLoss, WassersteinStyleLoss
from .params import DEFAULT_LR, StyleParams
from .tiling import TiledLoss, Tiling


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


@dataclass(frozen=True)
class Repair:
    """A scale that went wrong and was started again from its best image so far: the loss blew
    up (``cause`` "blow-up", or "non-finite"), or the optimizer stopped moving the image while
    its gradient was not zero ("stall", jcjohnson/neural-style #89)."""

    iteration: int
    scale: int
    cause: str
    restart_from: int  # the iteration whose image it went on from
    optimizer: str
    lr: float

    def describe(self) -> str:
        return (
            f"repair at iteration {self.iteration} (scale {self.scale + 1}): {self.cause}; went on from the image of "
            f"iteration {self.restart_from} with {self.optimizer}, lr {self.lr:g}, and a fresh optimizer state"
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
    repairs: list[Repair] = field(default_factory=list)
    best_image: torch.Tensor | None = None  # of the scale in progress: where a repair goes on from
    average: torch.Tensor | None = None  # of the scale in progress, with params.ema
    still: int = 0  # steps in a row that moved no pixel (a stall in the making)

    def to_dict(self) -> dict[str, Any]:
        return {
            **{k: getattr(self, k) for k in ("seed", "scale", "iteration", "image", "optimizer", "elapsed_s")},
            "scale_starts": list(self.scale_starts),
            "history": [tuple(vars(r).values()) for r in self.history],
            "early_stops": [vars(e) for e in self.early_stops],
            "repairs": [vars(r) for r in self.repairs],
            "best_image": self.best_image,
            "average": self.average,
            "still": self.still,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunState":
        """A state from ``to_dict``, of this or an older nst-batch (which kept no repairs)."""
        return cls(
            **{k: data[k] for k in ("seed", "scale", "iteration", "image", "optimizer", "elapsed_s", "scale_starts")},
            history=[LossRecord(*row) for row in data["history"]],
            early_stops=[EarlyStop(**e) for e in data["early_stops"]],
            repairs=[Repair(**r) for r in data.get("repairs", [])],
            best_image=data.get("best_image"),
            average=data.get("average"),
            still=data.get("still", 0),
        )


@dataclass(frozen=True)
class Progress:
    """What the callback sees after each iteration.

    ``frame``, every ``frame_every`` iterations (else None): a preview of the current image, on
    the CPU, in [0, 1], at most FRAME_LONG_SIDE (512) pixels on its long side, aspect kept (a
    smaller image as it is). It is downsized when captured, on the image's device, so no
    full-size copy is made: a frame is at most 3 MB (fp32) whatever the image's size. The image
    itself, full size, is in ``snapshot()``.
    """

    iteration: int  # 1-based, all scales together
    total_iterations: int  # upper bound: early stops may end sooner
    scale: int
    scales: int
    losses: LossRecord
    frame: torch.Tensor | None  # the current image as a preview of at most FRAME_LONG_SIDE px (CPU)
    snapshot: Callable[[], RunState]  # the state to resume from; costs a copy, so call it when needed
    picture: Callable[[], torch.Tensor] | None = None  # the current image as ``frame`` is, on demand


@dataclass(frozen=True)
class Result:
    image: torch.Tensor  # (1, 3, H, W) in [0, 1], on the CPU
    history: list[LossRecord]
    scale_starts: list[int]  # first iteration of each scale
    early_stops: list[EarlyStop]
    seed: int
    repairs: list[Repair] = field(default_factory=list)
    interrupted: bool = False
    state: RunState | None = None  # set when interrupted


Callback = Callable[[Progress], bool | None]


@dataclass(frozen=True)
class Member:
    """One transfer of a batch: the arguments of a stylize() call (a run as the engine sees it)."""

    content: torch.Tensor
    styles: Sequence[torch.Tensor]
    params: StyleParams
    init_image: torch.Tensor | None = None
    callback: Callback | None = None
    resume: RunState | None = None


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
    precision, channels-last layout or compiled (losses stay in fp32).
    """
    (outcome,) = stylize_batch(network, [Member(content, styles, params, init_image, callback, resume)], speed=speed)
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


def batch_key(params: StyleParams, content_shape: Sequence[int]) -> tuple:
    """Transfers with equal keys can share a batch: the same network truncation and pooling,
    and the same image shape at every scale. Everything else (weights, optimizer, iterations,
    seed, style images) may differ between members."""
    height, width = content_shape[-2:]
    layers = frozenset((*params.content_layer_names, *params.style_layer_names))
    shapes = tuple(fit_long_side(height, width, size) for size in params.scale_sizes)
    return (params.backbone, params.pooling, layers, shapes, params.tile if Tiling.of(params).splits(*shapes[-1]) else None)


def stylize_batch(network: Network, members: Sequence[Member], *, speed: Speed = Speed()) -> list[Result | Exception]:
    """Run several transfers with equal :func:`batch_key` through one forward and backward pass
    per iteration. Each member gets what stylize() would have given it: its Result, or in its
    place the error that ended it alone (bad input, a diverged loss, its callback's or its
    optimizer's exception); the others go on. Only what breaks the shared pass, or running out
    of memory anywhere (the batch is too big), is raised for all.
    """
    if not members:
        return []
    if len({batch_key(m.params, m.content.shape) for m in members}) > 1:
        raise ValueError("the members of a batch must have equal batch_key()s (layers, pooling, image shapes)")
    for member in members:
        if not member.styles:
            raise ValueError("stylize needs at least one style image")
        if member.params.init_image_name is not None and member.init_image is None:
            raise ValueError(f"init={member.params.init!r} names an image: pass it as init_image")
    first = members[0].params
    layers = (*first.content_layer_names, *first.style_layer_names)
    extractor = FeatureExtractor(network, layers, first.pooling, speed)
    transfers = [_Transfer(extractor, member, network.device) for member in members]
    # The targets are computed once per scale, eagerly; only the pass repeated every iteration is
    # worth compiling. dynamic=False: one graph per shape and batch size, each compiled when first seen.
    gradient_pass = torch.compile(extractor, dynamic=False) if speed.compile else extractor
    for scale in range(len(first.scale_sizes)):
        _iterate(gradient_pass, [run for transfer in transfers if (run := transfer.enter(scale)) is not None])
        for transfer in transfers:
            transfer.leave()
    return [transfer.outcome() for transfer in transfers]


class _Transfer:
    """One member's way through the scales: its state between them, and how it ended."""

    def __init__(self, extractor: FeatureExtractor, member: Member, device: torch.device):
        self.extractor, self.member, self.params, self.device = extractor, member, member.params, device
        self.state = member.resume or RunState(
            seed=self.params.seed if self.params.seed is not None else secrets.randbelow(2**31),
            scale=0, iteration=0, image=torch.empty(0), optimizer={},
        )
        self.resuming = member.resume is not None
        self.started = time.perf_counter() - self.state.elapsed_s
        self.error: Exception | None = None
        self.interrupted = False
        self.run: _ScaleRun | None = None
        self.tiling = Tiling.of(self.params)
        try:
            self.blend = self.params.blend_weights(len(member.styles))
            _check_short_sides(extractor, member.content, member.styles, self.params, self.params.scale_sizes[0])
        except InputError as error:
            self.error = error

    def enter(self, scale: int) -> "_ScaleRun | None":
        """The run of this scale, or None when this member has ended or already passed it."""
        if self.error is not None or self.interrupted or scale < self.state.scale:
            return None
        with _member_errors(self):
            self.run = self._scale_run(scale)
        return self.run

    def _scale_run(self, scale: int) -> "_ScaleRun":
        sizes = self.params.scale_sizes
        content = resize_long_side(self.member.content, sizes[scale]).to(self.device)
        if self.resuming and scale == self.state.scale:
            image = self.state.image.to(content.device)
            if image.shape[-2:] != content.shape[-2:]:
                raise ValueError(
                    f"the resume state holds a {tuple(image.shape[-2:])} image, but these parameters make "
                    f"{tuple(content.shape[-2:])} at scale {scale}: resume with the parameters it was saved with"
                )
        else:
            image = _starting_image(scale, self.state, content, self.member.init_image, self.params)
            optimizer, lr = {}, self.params.learning_rate
            if self.params.carry_optimizer and self.state.optimizer:  # the last scale's
                optimizer = _carried_adam_state(self.state.optimizer, tuple(image.shape[-2:]), lr)
            self.state = replace(
                self.state, scale=scale, optimizer=optimizer, best_image=None, average=None,
                scale_starts=[*self.state.scale_starts, self.state.iteration],
            )
        self.resuming = False
        loss_fn = scale_loss(self.extractor, self.tiling, content, self.member.styles, self.params, self.blend, sizes[scale])
        tiled = TiledLoss(loss_fn, self.extractor, self.tiling) if self.tiling.splits(*content.shape[-2:]) else None
        return _ScaleRun(loss_fn, image, self.params, self.state, self.started, len(sizes), self.member.callback, tiled)

    def leave(self) -> None:
        if self.run is None:
            return
        run, self.run = self.run, None
        if run.error is not None:
            self.error = run.error
        elif run.stopped:
            self.state, self.interrupted = run.stop_state, True
        else:  # the next scale's optimizer starts afresh: a copy of this one's state would be wasted...
            self.state = run.snapshot(with_optimizer=False, final=True)
            if self.params.carry_optimizer and run.state.scale + 1 < len(self.params.scale_sizes):
                # ...unless it goes on from it; no copy, this scale is over
                self.state = replace(self.state, optimizer=run.optimizer.state_dict())

    def outcome(self) -> Result | Exception:
        if self.error is None:
            with _member_errors(self):
                return _result(self.state, self.member.content, self.params, interrupted=self.interrupted)
        return self.error


@contextmanager
def _member_errors(holder: "_Transfer | _ScaleRun") -> Iterator[None]:
    """What goes wrong in one member's own work ends that member, as its ``error``; running out
    of memory is the batch's problem, not the member's, and is raised for all."""
    try:
        yield
    except (torch.OutOfMemoryError, MemoryError):
        raise
    except Exception as error:
        holder.error = error


def _iterate(extractor: Callable[[torch.Tensor], dict[str, torch.Tensor]], runs: list["_ScaleRun"]) -> None:
    """Step every run of one scale until each has ended: one forward and backward pass of all
    active images per iteration. A run's loss depends on its own image alone (the network mixes
    nothing across a batch), so the summed loss gives each image exactly its own gradient.

    Tiled runs go one after another, tile by tile, through the plain extractor: their crops
    differ in shape, which a compiled pass would recompile for."""
    active = [run for run in runs if not run.ended()]
    while active:
        for run in active:
            run.optimizer.zero_grad(set_to_none=True)
        if active[0].tiled is not None:  # a batch's members are all tiled, or none (batch_key)
            totals = [run.evaluate_tiled() for run in active]
        else:
            images = [run.image for run in active]
            features = extractor(images[0] if len(images) == 1 else torch.cat(images))
            totals = [run.evaluate({name: f[i : i + 1] for name, f in features.items()}) for i, run in enumerate(active)]
            sum(totals).backward()
            del features
        for run, total in zip(active, totals):
            run.advance(total)
        active = [run for run in active if not run.ended()]


def _check_short_sides(
    extractor: FeatureExtractor, content: torch.Tensor, styles: Sequence[torch.Tensor], params: StyleParams, size: int
) -> None:
    """A very wide image at a small size would shrink to nothing before the deepest layer."""
    style_size = params.style_long_side(size)
    named = [("content", content, size), *((f"style {i + 1}", s, style_size) for i, s in enumerate(styles))]
    for what, image, long_side in named:
        short = min(fit_long_side(*image.shape[-2:], long_side))
        if short < extractor.min_side:
            raise InputError(
                f"the {what} image is too narrow: at {long_side} px on its long side its short side is {short} px, "
                f"but the layers up to {extractor.names[-1]} need {extractor.min_side} px: raise image_size "
                f"(or style_scale, style_size), use fewer scales, or crop it"
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
        return torch.rand((1, 3, *shape), generator=generator, dtype=content.dtype).to(content.device)
    return resize(init_image.to(content.device), shape)


def scale_loss(
    extractor: FeatureExtractor,
    tiling: Tiling,
    content: torch.Tensor,
    styles: Sequence[torch.Tensor],
    params: StyleParams,
    blend: Sequence[float],
    size: int,
) -> StyleTransferLoss:
    """The loss of one scale whose long side is ``size``, its targets computed tile by tile when
    ``tiling`` cuts the images."""
    content_features = tiling.features(extractor, content, params.content_layer_names)
    style_size = params.style_long_side(size)
    style_images = [resize_long_side(s, style_size).to(content.device) for s in styles]
    if params.preserve_colors:
        style_images = [luminance(s) for s in style_images]
    style_moments = [tiling.moments(extractor, s, params.style_layer_names) for s in style_images]
    # Features k times larger make the content term k^2 and the style term k^4 times larger.
    unit = extractor.feature_scale() if params.loss_normalization == "network" else 1.0
    return StyleTransferLoss(
        content={name: ContentLoss(content_features[name], 1 / unit) for name in params.content_layer_names},
        style={name: _style_loss(params, [m[name] for m in style_moments], blend, unit) for name in params.style_layer_names},
        layer_weights=params.layer_weights,
        content_weight=params.alpha,
        style_weight=params.beta,
        tv_weight=params.tv_weight,
    )


# A step blew up when the loss it led to is this many times the best of its scale so far. Measured
# on real features (benchmarks/quality.py): legitimate runs rose at most 3.4x their best; the
# blow-ups of unbounded L-BFGS rose 1.28e4x (and 2e21x in the run that froze on its content).
BLOWUP_FACTOR = 100.0
# The optimizer stalled when this many steps in a row moved no pixel while the gradient was not
# zero: L-BFGS then repeats the same non-descent direction for ever (jcjohnson/neural-style #89).
STALL_STEPS = 3
# ...below this largest gradient entry L-BFGS stops stepping by design (torch's tolerance_grad):
# that is convergence, not a stall.
CONVERGED_GRADIENT = 1e-7
MAX_REPAIRS = 3  # per scale: lr / 10, lr / 100, then Adam (an Adam run: lr / 1000); one more is an error


def _style_loss(params: StyleParams, moments: list[Moments], blend: Sequence[float], unit: float):
    """The Gram matrix grows with the features squared, the Wasserstein distance as a content term does."""
    if params.style_loss == "wasserstein":
        return WassersteinStyleLoss.blended(moments, blend, 1 / unit)
    return StyleLoss.blended(moments, blend, 1 / unit**2)


class _ScaleRun:
    """One member's optimizer at one scale: it is handed its loss, steps, records and reports.

    It also keeps the scale honest: an L-BFGS step is cut to ``lbfgs_max_step``, and a blow-up or
    a stall goes back to the best image so far with a smaller step and a fresh optimizer state
    (a :class:`Repair`), instead of ending as a picture nobody wanted.
    """

    def __init__(
        self, loss_fn: StyleTransferLoss, image: torch.Tensor, params: StyleParams, state: RunState, started: float,
        scales: int, callback: Callback | None, tiled: TiledLoss | None = None,
    ):
        self.loss_fn, self.params, self.state, self.callback = loss_fn, params, state, callback
        self.tiled = tiled  # the same loss, tile by tile: evaluate_tiled()
        self.started, self.scales = started, scales
        # Callers may pass any layout (a decoded image is often a transposed view); L-BFGS
        # flattens the parameter with .view(), which needs contiguous memory.
        self.image = image.detach().clone(memory_format=torch.contiguous_format).requires_grad_(True)
        self.repairs = list(state.repairs)
        here = self._repairs_here()
        self.optimizer_name, self.lr = (here[-1].optimizer, here[-1].lr) if here else (params.optimizer, params.learning_rate)
        self.optimizer = _optimizer(self.optimizer_name, self.lr, params.lbfgs_history, self.image)
        if state.optimizer:
            saved = "lbfgs" if "history_size" in state.optimizer["param_groups"][0] else "adam"
            if saved != self.optimizer_name:
                raise ValueError(
                    f"the resume state was saved by {saved}, not {self.optimizer_name}: "
                    "resume with the parameters it was saved with"
                )
            self.optimizer.load_state_dict(state.optimizer)
        self.history = list(state.history)
        self.early_stops = list(state.early_stops)
        self.iteration = state.iteration
        self.scale_start = state.scale_starts[-1]
        # Early stop looks at the iterations since the scale began or was last repaired.
        self.attempt_start = here[-1].iteration if here else self.scale_start
        self.best = list(accumulate((r.total for r in self.history[self.attempt_start :]), min))
        finite = [r for r in self.history[self.scale_start :] if math.isfinite(r.total)]
        best = min(finite, key=lambda r: r.total, default=None)
        self.best_total = best.total if best else None
        self.best_iteration = best.iteration if best else self.iteration
        # copies: the caller's resume state must stay as it was, to resume from again
        self.best_image = state.best_image.to(self.image.device, copy=True) if state.best_image is not None else None
        self.average = state.average.to(self.image.device, copy=True) if state.average is not None else None
        self._before = torch.empty_like(self.image, requires_grad=False)
        self.still = state.still  # steps in a row that moved no pixel
        self.stopped = False  # by the callback...
        self.stop_state: RunState | None = None  # ...which leaves the state to resume from
        self.error: Exception | None = None

    def _repairs_here(self) -> list[Repair]:
        return [r for r in self.repairs if r.scale == self.state.scale]

    def ended(self) -> bool:
        """Stopped, failed, out of iterations, or stopped early (an early stop ends its scale)."""
        if self.stopped or self.error is not None:
            return True
        early = bool(self.early_stops) and self.early_stops[-1].scale == self.state.scale
        # ...but never on a repair: one more iteration evaluates the image it went back to
        just_repaired = bool(self.repairs) and self.repairs[-1].iteration == self.iteration
        done = self.iteration - self.scale_start >= self.params.iterations_at(self.state.scale)
        return early or (done and not just_repaired)

    def evaluate(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """This image's total loss from its features; the caller runs the backward pass."""
        total, terms = self.loss_fn(self.image, features)
        self.terms = torch.stack([terms["content"], terms["style"], terms["tv"], total]).detach()
        return total

    def evaluate_tiled(self) -> torch.Tensor:
        """This image's total loss, tile by tile, with its gradient already in ``image.grad``."""
        total, terms = self.tiled.backward(self.image)
        self.terms = torch.stack([terms["content"], terms["style"], terms["tv"], total])
        return total

    def advance(self, total: torch.Tensor) -> None:
        """One optimizer step from the loss and gradient just computed, then record and report."""
        with _member_errors(self):
            self._advance(total)

    def _advance(self, total: torch.Tensor) -> None:
        self.iteration += 1
        record = LossRecord(self.iteration, *self.terms.tolist(), time.perf_counter() - self.started)
        self.history.append(record)  # the loss of the image just evaluated, before this step
        if not math.isfinite(record.total):
            self._repair("non-finite loss", record)
        elif self.best_total is not None and record.total > BLOWUP_FACTOR * self.best_total:
            self._repair(f"blow-up: the loss rose to {record.total:.3g}, {record.total / self.best_total:.3g}x its best", record)
        else:
            if self.best_total is None or record.total < self.best_total:
                self.best_total, self.best_iteration = record.total, self.iteration
                self.best_image = _copy_into(self.best_image, self.image)
            self.still = 0 if self._step(total) else self.still + 1
            if self.params.ema:
                self._average()
            self.best.append(min(self.best[-1], record.total) if self.best else record.total)
            if self.still >= STALL_STEPS and self.image.grad.abs().max().item() > CONVERGED_GRADIENT:
                self._repair(f"stall: {self.still} steps moved no pixel, far from converged", record)
            else:
                early_stop = self._early_stop()
                if early_stop:  # recorded before the callback, so a snapshot taken there knows it
                    self.early_stops.append(early_stop)
        if self.error is None and self.callback is not None:
            every = self.params.frame_every
            frame = self._picture() if every and self.iteration % every == 0 else None
            progress = Progress(
                self.iteration, self.params.total_iterations, self.state.scale, self.scales, record, frame,
                self.snapshot, self._picture,
            )
            if self.callback(progress):
                self.stopped = True
                self.stop_state = self.snapshot()  # now: the clock must not run on while others finish

    def _step(self, total: torch.Tensor) -> bool:
        """One optimizer step; whether it moved the image. An L-BFGS step that would change a
        pixel by more than ``lbfgs_max_step`` is shortened, and its step length with it, so the
        curvature pair L-BFGS records next is the step really taken."""
        before = self._before.copy_(self.image.detach())
        self.optimizer.step(_evaluated(total))
        with torch.no_grad():
            moved = self.image - before
            largest = moved.abs().max().item()
            bound = self.params.lbfgs_max_step
            if self.optimizer_name == "lbfgs" and bound and largest > bound:
                factor = bound / largest
                self.image.copy_(before.add_(moved, alpha=factor))
                state = self.optimizer.state[self.image]
                state["t"] = state["t"] * factor
        return largest > 0

    def _average(self) -> None:
        """The iterates' exponential moving average (Adam's iterates jitter around where they go),
        with a warm-up decay, so the start image weighs nothing after a few dozen steps."""
        steps = self.iteration - self.attempt_start
        decay = min(self.params.ema, (1 + steps) / (10 + steps))
        with torch.no_grad():
            if self.average is None:
                self.average = self.image.detach().clone()
            else:
                self.average.lerp_(self.image, 1 - decay)

    def _repair(self, cause: str, record: LossRecord) -> None:
        """Go on from the best image of the scale with a tenth of the step (Adam at the last
        repair), and a fresh optimizer; after MAX_REPAIRS the member ends with the reason."""
        here = self._repairs_here()
        if len(here) >= MAX_REPAIRS or self.best_image is None:
            tried = f" after {len(here)} repairs" if here else ""
            self.error = DivergedError(
                f"{cause} at iteration {self.iteration}{tried}: lower lr or the loss weights"
                + (" (or use optimizer: lbfgs)" if self.params.optimizer == "adam" else "")
            )
            return
        if len(here) + 1 == MAX_REPAIRS and self.optimizer_name == "lbfgs":
            name, lr = "adam", DEFAULT_LR["adam"]
        else:
            name, lr = self.optimizer_name, self.lr / 10
        with torch.no_grad():
            self.image.copy_(self.best_image)
        self.optimizer_name, self.lr = name, lr
        self.optimizer = _optimizer(name, lr, self.params.lbfgs_history, self.image)
        self.repairs.append(Repair(self.iteration, self.state.scale, cause, self.best_iteration, name, lr))
        self.best, self.still, self.attempt_start = [], 0, self.iteration
        self.average = None  # it took in the step that went wrong

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
        """The progress frame: shrunk where the image is (on its device), so only the preview is copied."""
        return shrink_long_side(self.image.detach(), FRAME_LONG_SIDE).clamp(0, 1).cpu()

    def snapshot(self, with_optimizer: bool = True, final: bool = False) -> RunState:
        """The state to resume from; ``final``: the scale's result, which with ema is the average."""
        image = self.average if final and self.average is not None else self.image
        return replace(
            self.state,
            iteration=self.iteration,
            image=image.detach().cpu().clone(),  # unclamped: a resumed run continues exactly
            average=self.average.cpu().clone() if with_optimizer and self.average is not None else None,
            still=self.still if with_optimizer else 0,
            optimizer=_to_cpu(self.optimizer.state_dict()) if with_optimizer else {},
            history=list(self.history),
            early_stops=list(self.early_stops),
            repairs=list(self.repairs),
            best_image=self.best_image.cpu().clone() if with_optimizer and self.best_image is not None else None,
            elapsed_s=time.perf_counter() - self.started,
        )


def _copy_into(buffer: torch.Tensor | None, image: torch.Tensor) -> torch.Tensor:
    """``image``'s values, in ``buffer`` when there is one (no allocation per iteration)."""
    if buffer is None:
        return image.detach().clone()
    return buffer.copy_(image.detach())


def _carried_adam_state(saved: dict[str, Any], shape: tuple[int, int], lr: float) -> dict[str, Any]:
    """Adam's state at the end of a scale, for the next scale's image of ``shape``: each moment
    resized, and scaled as the gradient scales (every loss is a mean over the pixels, so a pixel's
    gradient shrinks as their number grows), with its step count, so the bias correction does not
    start over and blow the first steps up. The step size is ``lr``, whatever a repair left."""
    def resized(moment: torch.Tensor) -> torch.Tensor:  # not images.resize: no clamping to [0, 1]
        return torch.nn.functional.interpolate(moment, size=shape, mode="bilinear", align_corners=False, antialias=True)

    state = {}
    for key, moments in saved["state"].items():
        height, width = moments["exp_avg"].shape[-2:]
        shrink = height * width / (shape[0] * shape[1])
        state[key] = {
            "step": moments["step"].clone(),
            "exp_avg": resized(moments["exp_avg"]) * shrink,
            "exp_avg_sq": resized(moments["exp_avg_sq"]) * shrink**2,  # the filter's weights are >= 0: so is it
        }
    return {"state": state, "param_groups": [{**group, "lr": lr} for group in saved["param_groups"]]}


def _evaluated(total: torch.Tensor) -> Callable[[], torch.Tensor]:
    """The closure an optimizer step asks for, answered with the loss already computed (in the
    batch's shared pass). L-BFGS with max_iter=1 and no line search evaluates exactly once per
    step, at its current point: a second call would mean that no longer holds."""
    calls = 0

    def closure() -> torch.Tensor:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise RuntimeError("the optimizer asked for a second evaluation in one step")
        return total.detach()

    return closure


def _optimizer(name: str, lr: float, lbfgs_history: int, image: torch.Tensor) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam([image], lr=lr)
    # One closure evaluation per step, so one iteration costs one forward and backward pass.
    return torch.optim.LBFGS([image], lr=lr, max_iter=1, history_size=lbfgs_history)


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
        repairs=state.repairs,
        interrupted=interrupted,
        state=state if interrupted else None,
    )
