"""StyleParams: every knob of one style transfer, validated once.

The same model backs the CLI flags, the config's ``defaults:``, a sidecar's keys and the engine
itself, so a new knob is added here and shows up everywhere, validated and documented.
"""

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from ..util.errors import InputError
from .layers import BACKBONES, DEFAULT_LAYERS, LAYERS, unknown_layer_message

Backbone = Literal["vgg19", "vgg16", "resnet18"]
assert set(BACKBONES) == set(Backbone.__args__)  # type: ignore[attr-defined]

DEFAULT_LR = {"lbfgs": 1.0, "adam": 0.02}
STYLE_WEIGHT_NETWORK = 1600.0
LBFGS_MAX_STEP = 0.1

LossNormalization = Literal["none", "network"]
Iterations = Annotated[int, Field(ge=1, le=100_000)]
# (content_weight, style_weight) when unset. With "none" they are neural-style's and PyTorch's
# tutorial's; with "network" the terms are in units of the network's feature scale and the
# weights were chosen with benchmarks/quality.py (docs/benchmarks.md, "Quality").
DEFAULT_WEIGHTS: dict[str, tuple[float, float]] = {"none": (1.0, 1e6), "network": (1.0, STYLE_WEIGHT_NETWORK)}

# What a recorded parameter set meant by a field it predates: the engine's behaviour before the
# field existed. A run queued or checkpointed by an older nst-batch keeps its meaning.
BEFORE_FIELDS: dict[str, Any] = {"loss_normalization": "none", "lbfgs_max_step": 0.0}


def _split_list(value: Any) -> Any:
    """Accept ``"a,b c"`` (CLI, YAML scalars) as well as real lists."""
    if isinstance(value, str):
        return tuple(part for part in value.replace(",", " ").split() if part)
    if isinstance(value, (int, float)):
        return (value,)
    return value


class StyleParams(BaseModel):
    """Parameters of one style transfer. Unset optional values take the documented default."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    backbone: Backbone = Field("vgg19", description="feature network: vgg19 | vgg16 | resnet18")
    pooling: Literal["max", "avg"] = Field("max", description="pooling layers: max | avg (smoother gradients)")
    image_size: int = Field(512, ge=16, le=16384, description="long side of the output in pixels; aspect is kept")
    style_scale: float = Field(
        1.0, gt=0, le=8, description="style images are resized to each scale's size x style_scale"
    )
    style_size: int | None = Field(
        None, ge=16, le=16384,
        description="long side of the style images in pixels at every scale, so textures keep their size in pixels "
        "whatever image_size; replaces style_scale; default: unset (style_scale)",
    )
    loss_normalization: LossNormalization = Field(
        "network",
        description="network: the terms in units of the network's feature scale, so weights mean the same on "
        "every network | none: the raw terms of neural-style (content_weight 1, style_weight 1e6)",
    )
    content_weight: float | None = Field(None, ge=0, description="weight of the content loss (alpha); default 1")
    style_weight: float | None = Field(
        None, ge=0, description=f"weight of the style loss (beta); default {STYLE_WEIGHT_NETWORK:g}, or 1e6 with loss_normalization: none"
    )
    tv_weight: float = Field(0.0, ge=0, description="weight of the total-variation (smoothness) loss")
    style_loss: Literal["gram", "wasserstein"] = Field(
        "gram", description="gram: Gatys' Gram matrices | wasserstein: means and covariances (crowsonkb's W2)"
    )
    content_layers: tuple[str, ...] | None = Field(
        None, min_length=1, description="layers whose features the result must match; default relu4_2 (VGG)"
    )
    style_layers: tuple[str, ...] | None = Field(
        None, min_length=1, description="layers whose Gram matrices the result must match; default relu1_1..relu5_1"
    )
    style_layer_weights: tuple[float, ...] | None = Field(
        None, description="one weight per style layer, e.g. [1, 0.75, 0.2, 0.2, 0.2]; default all 1"
    )
    style_blend_weights: tuple[float, ...] | None = Field(
        None, description="one weight per style image when blending several; normalized to sum 1; default equal"
    )
    optimizer: Literal["lbfgs", "adam"] = Field("lbfgs", description="lbfgs | adam")
    lr: float | None = Field(None, gt=0, description="step size; default 1.0 for lbfgs, 0.02 for adam")
    lbfgs_history: int = Field(100, ge=1, le=1000, description="L-BFGS history size (memory grows with it)")
    lbfgs_max_step: float = Field(
        LBFGS_MAX_STEP, ge=0, le=1, description="largest change of any pixel (0-1) in one L-BFGS step; 0 = unbounded"
    )
    ema: float = Field(
        0.0, ge=0, lt=1, description="keep an average of the iterates with this decay, e.g. 0.99, as each scale's image; 0 = off"
    )
    iterations: Iterations = Field(300, description="iterations at each scale (unless scale_iterations)")
    early_stop_tol: float = Field(
        1e-3, ge=0, lt=1, description="stop a scale when the loss improved less than this fraction over the window; 0 = off"
    )
    early_stop_window: int = Field(100, ge=1, description="iterations over which early_stop_tol is measured")
    init: str = Field("content", min_length=1, description="content | noise | path of an image to start from")
    scales: int = Field(1, ge=1, le=8, description="coarse-to-fine scales; each is the next one's size / scale_ratio")
    scale_ratio: float = Field(
        2.0, gt=1, le=4, description="each scale's long side is the next one's / scale_ratio, e.g. 1.414 (sqrt 2)"
    )
    scale_iterations: tuple[Iterations, ...] | None = Field(
        None, min_length=1,
        description="iterations at each scale, smallest first, one per scale, e.g. 1000,500,200; default: unset "
        "(iterations at every scale)",
    )
    carry_optimizer: bool = Field(
        False, description="with adam: carry its moments on to the next scale, resized, instead of starting afresh"
    )
    preserve_colors: bool = Field(False, description="keep the content's colours (luminance-only transfer)")
    seed: int | None = Field(None, ge=0, description="random seed; the same seed gives the same result")
    frame_every: int = Field(0, ge=0, description="keep a progress frame every K iterations (0 = none)")
    tile: int | None = Field(
        None, ge=16, le=16384,
        description="compute each iteration in tiles of about this many px (and a halo around each): the same "
        "result, in the memory of one tile; unset: the whole image at once (nst-batch run --tile auto: the "
        "largest tile that fits)",
    )

    _split_lists = field_validator(
        "content_layers", "style_layers", "style_layer_weights", "style_blend_weights", "scale_iterations",
        mode="before",
    )(_split_list)

    @field_validator("style_layer_weights", "style_blend_weights")
    @classmethod
    def _non_negative(cls, weights: tuple[float, ...] | None) -> tuple[float, ...] | None:
        if weights is not None and (any(w < 0 for w in weights) or sum(weights) <= 0):
            raise ValueError("weights must be >= 0 and not all zero")
        return weights

    # Field validators, not a model validator, so an error names its key; they run in field
    # order, so ``backbone`` and ``style_layers`` are already checked when later fields look.
    @field_validator("content_layers", "style_layers")
    @classmethod
    def _layers_exist(cls, names: tuple[str, ...] | None, info: ValidationInfo) -> tuple[str, ...] | None:
        backbone = info.data.get("backbone")
        for name in names or ():
            if backbone is not None and name not in LAYERS[backbone]:
                raise ValueError(unknown_layer_message(backbone, name))
        return names

    @field_validator("style_layer_weights")
    @classmethod
    def _one_weight_per_layer(cls, weights: tuple[float, ...] | None, info: ValidationInfo) -> tuple[float, ...] | None:
        if weights is None or "backbone" not in info.data or "style_layers" not in info.data:
            return weights
        layers = info.data["style_layers"] or DEFAULT_LAYERS[info.data["backbone"]][1]
        if len(weights) != len(layers):
            raise ValueError(
                f"{len(weights)} values for {len(layers)} style layers ({', '.join(layers)}): give one per layer"
            )
        return weights

    @field_validator("style_size")
    @classmethod
    def _one_style_size(cls, style_size: int | None, info: ValidationInfo) -> int | None:
        style_scale = info.data.get("style_scale", 1.0)
        if style_size is not None and style_scale != 1.0:
            raise ValueError(
                f"style_size {style_size} and style_scale {style_scale:g} both size the style images: "
                "give one (style_scale: 1 with style_size)"
            )
        return style_size

    @field_validator("scale_iterations")
    @classmethod
    def _iterations_per_scale(cls, counts: tuple[int, ...] | None, info: ValidationInfo) -> tuple[int, ...] | None:
        if counts is None:
            return None
        scales = info.data.get("scales")
        if scales is not None and len(counts) != scales:
            given = f"{len(counts)} value" + ("s" if len(counts) > 1 else "")
            of = f"{scales} scale" + ("s" if scales > 1 else "")
            raise ValueError(f"{given} for {of}: give one per scale, smallest first")
        return counts

    @field_validator("carry_optimizer")
    @classmethod
    def _carried_by_adam(cls, carry: bool, info: ValidationInfo) -> bool:
        if carry and info.data.get("optimizer") == "lbfgs":
            raise ValueError(
                "only adam's state can be carried to the next scale (L-BFGS's curvature pairs are of another "
                "image size): set optimizer: adam, or carry_optimizer: false"
            )
        return carry

    @property
    def content_layer_names(self) -> tuple[str, ...]:
        return self.content_layers or DEFAULT_LAYERS[self.backbone][0]

    @property
    def style_layer_names(self) -> tuple[str, ...]:
        return self.style_layers or DEFAULT_LAYERS[self.backbone][1]

    @property
    def layer_weights(self) -> dict[str, float]:
        weights = self.style_layer_weights or (1.0,) * len(self.style_layer_names)
        return dict(zip(self.style_layer_names, weights))

    @property
    def init_image_name(self) -> str | None:
        """The image the optimization starts from, when ``init`` names one (not content or noise)."""
        return None if self.init in ("content", "noise") else self.init

    @property
    def alpha(self) -> float:
        """The content weight, its default resolved."""
        return self.content_weight if self.content_weight is not None else DEFAULT_WEIGHTS[self.loss_normalization][0]

    @property
    def beta(self) -> float:
        """The style weight, its default resolved."""
        return self.style_weight if self.style_weight is not None else DEFAULT_WEIGHTS[self.loss_normalization][1]

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.optimizer]

    @property
    def scale_sizes(self) -> tuple[int, ...]:
        """Long side at each scale, smallest first; the last is image_size."""
        return tuple(max(16, round(self.image_size / self.scale_ratio**k)) for k in reversed(range(self.scales)))

    def iterations_at(self, scale: int) -> int:
        """Iterations of the scale of index ``scale`` (0: the smallest); early stops may end it sooner."""
        return self.scale_iterations[scale] if self.scale_iterations is not None else self.iterations

    @property
    def total_iterations(self) -> int:
        """Iterations of every scale together: an upper bound, early stops may end sooner."""
        return sum(self.iterations_at(scale) for scale in range(self.scales))

    def style_long_side(self, size: int) -> int:
        """Long side of the style images at a scale whose long side is ``size``."""
        return self.style_size if self.style_size is not None else max(16, round(size * self.style_scale))

    def blend_weights(self, n_styles: int) -> tuple[float, ...]:
        """Normalized blend weights for ``n_styles`` style images."""
        weights = self.style_blend_weights or (1.0,) * n_styles
        if len(weights) != n_styles:
            raise InputError(
                f"style_blend_weights has {len(weights)} values for {n_styles} style images: give one per style"
            )
        total = sum(weights)
        return tuple(w / total for w in weights)

    def with_overrides(self, overrides: Mapping[str, Any]) -> "StyleParams":
        """A copy with ``overrides`` applied and everything validated again."""
        return StyleParams.model_validate({**self.model_dump(exclude_unset=True), **overrides})

    def explicit(self) -> dict[str, Any]:
        """Every parameter with defaults resolved: what a result records it was made with."""
        return {
            **self.model_dump(),
            "content_layers": list(self.content_layer_names),
            "style_layers": list(self.style_layer_names),
            "content_weight": self.alpha,
            "style_weight": self.beta,
            "lr": self.learning_rate,
        }

    def weights_hint(self) -> str | None:
        """A warning for weights on neural-style's scale given with this normalization."""
        if self.loss_normalization == "network" and self.style_weight is not None and self.style_weight >= 1e5:
            return (
                f"style_weight {self.style_weight:g} is on neural-style's scale, but loss_normalization is network "
                f"(default style_weight {STYLE_WEIGHT_NETWORK:g}): set loss_normalization: none to use neural-style's weights"
            )
        return None

    def stored(self) -> dict[str, Any]:
        """What a queue or a checkpoint records: the fields set, and every field of BEFORE_FIELDS.
        Reading it back (``from_stored``) gives these parameters as long as only the defaults of
        BEFORE_FIELDS change; a field whose default changes must be added there."""
        return {**self.model_dump(mode="json", include=set(BEFORE_FIELDS)), **self.model_dump(mode="json", exclude_unset=True)}

    @classmethod
    def from_stored(cls, data: Mapping[str, Any]) -> "StyleParams":
        """Parameters that ``stored()`` recorded, by this or an older nst-batch: a field the record
        lacks means what the engine did before that field existed (BEFORE_FIELDS)."""
        return cls.model_validate({**BEFORE_FIELDS, **data})
