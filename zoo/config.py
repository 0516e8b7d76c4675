"""Training recipes as strict pydantic v2 configs (CAREamics style).

A recipe YAML parses into one `Recipe`; unknown keys are errors, bounds are checked by `Field`, the task is a
discriminator, and cross-field rules (patch size divisible by 2**depth, split fractions summing to 1) are
validators. Errors name the YAML path that is wrong ("training.lr: ...").
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from biozoo.runtime import TrainingError, load_yaml_file


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(_Strict):
    name: str = Field(description="registered architecture, e.g. unet2d")
    depth: int = Field(3, ge=1, le=6)
    base_channels: int = Field(16, ge=1, le=256)
    convs_per_block: int = Field(2, ge=1, le=4)
    batch_norm: bool = False
    residual: bool = False


class EarlyStopping(_Strict):
    monitor: str = "val_loss"
    mode: Literal["min", "max"] = "min"
    patience: int = Field(10, ge=1)
    min_delta: float = Field(0.0, ge=0)


class TrainingConfig(_Strict):
    batch_size: int = Field(8, ge=1, le=1024)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0, le=1)
    weight_decay: float = Field(0.0, ge=0)
    schedule: Literal["none", "cosine", "plateau"] = "cosine"
    epochs: int = Field(50, ge=1)
    steps_per_epoch: int = Field(20, ge=1)
    early_stopping: Optional[EarlyStopping] = EarlyStopping()
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = Field(0, ge=0, description="torch CPU threads; 0 = all cores")


class AugmentationConfig(_Strict):
    """Augmentations beyond flips, rot90 and the small intensity jitter of `data.augment` (task stardist only): for
    models meant to work on other microscopes than the training ones. Every one is off by default. The photometric
    ones (gamma, noise, blur) are each applied to half of the patches, so clean patches are still seen."""

    scale: Optional[tuple[float, float]] = Field(
        None, description="random isotropic zoom, log-uniform in [low, high] (e.g. [0.6, 1.7]): a different pixel "
                          "size or nucleus size; image linear (anti-aliased when shrunk), labels nearest, targets "
                          "recomputed from the zoomed labels")
    gamma: Optional[tuple[float, float]] = Field(
        None, description="x -> sign(x) |x|^gamma of the normalized image, gamma log-uniform in [low, high]")
    noise: float = Field(0.0, ge=0, le=1, description="additive Gaussian noise, sigma ~ U(0, noise) in units of the "
                                                      "normalized image (1 = the percentile range)")
    blur: float = Field(0.0, ge=0, le=5, description="Gaussian blur, sigma ~ U(0, blur) pixels (defocus, a lower NA)")

    @model_validator(mode="after")
    def _ranges(self) -> "AugmentationConfig":
        for name in ("scale", "gamma"):
            r = getattr(self, name)
            if r is not None and not (0 < r[0] <= r[1] <= 10):
                raise ValueError(f"{name} {list(r)}: expected [low, high] with 0 < low <= high <= 10, e.g. "
                                 f"{[0.6, 1.7] if name == 'scale' else [0.7, 1.4]}")
        return self

    @property
    def active(self) -> bool:
        return self != AugmentationConfig()


class DataConfig(_Strict):
    dataset: str = Field(description="a dataset name from `biozoo data list`, or a folder with images/ (+ masks/ or targets/)")
    tile: Optional[int] = Field(128, ge=16, description="cut images into disjoint tiles of this size before splitting")
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    patch_size: tuple[int, ...] = (64, 64)
    percentiles: tuple[float, float] = (1.0, 99.8)
    augment: bool = True
    augmentation: AugmentationConfig = AugmentationConfig()
    foreground_aware: bool = True
    weighted_sampling: Literal["auto", "on", "off"] = "auto"
    pixel_size: Optional[tuple[float, ...]] = Field(None, description="training pixel size in micrometer, per space axis")

    @model_validator(mode="after")
    def _fractions(self) -> "DataConfig":
        if abs(sum(self.fractions) - 1.0) > 1e-6 or min(self.fractions) <= 0:
            raise ValueError(f"fractions {self.fractions} must be positive and sum to 1 (train, val, test)")
        if self.percentiles[0] >= self.percentiles[1]:
            raise ValueError(f"percentiles {self.percentiles}: the low one must be below the high one")
        if self.augmentation.active and not self.augment:
            raise ValueError("data.augmentation is set but data.augment is false (no augmentation at all); set "
                             "augment: true or remove data.augmentation")
        return self


class EvaluationConfig(_Strict):
    """How the dense tasks test: the test images are cut into disjoint tiles, the resampling units of a paired
    bootstrap that gives every metric and every "A beats B" claim a 95% interval."""

    tile: int = Field(64, ge=8, description="tile size in pixels (YX) of the bootstrap over test tiles")
    resamples: int = Field(2000, ge=100, le=100000)
    seed: int = 0


class _RecipeBase(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    description: str = ""
    model: ModelConfig
    data: DataConfig
    training: TrainingConfig = TrainingConfig()

    @model_validator(mode="after")
    def _patch_fits_depth(self) -> "_RecipeBase":
        step = 2**self.model.depth
        bad = [p for p in self.data.patch_size if p % step]
        if bad:
            raise ValueError(
                f"data.patch_size {self.data.patch_size} must be divisible by 2**model.depth = {step}; "
                f"use e.g. {tuple(max(step, p // step * step) for p in self.data.patch_size)}"
            )
        if self.data.augmentation.active and getattr(self, "task", None) != "stardist":
            raise ValueError(f"data.augmentation (zoom, gamma, noise, blur) is implemented for task 'stardist' only; "
                             f"got task {getattr(self, 'task', None)!r}: remove data.augmentation")
        return self


class SegmentationRecipe(_RecipeBase):
    task: Literal["segmentation"]
    classes: tuple[str, ...] = ("background", "foreground", "boundary")
    evaluation: EvaluationConfig = EvaluationConfig()


class CareRecipe(_RecipeBase):
    task: Literal["care"]
    noise: tuple[float, float] = Field((1.0, 0.05), description="Poisson gain and Gaussian sigma of the noisy inputs")
    bin: int = Field(1, ge=1, le=8, description="the clean reference is the real image averaged over bin x bin "
                                                "pixels (YX), which divides its own noise by bin")
    evaluation: EvaluationConfig = EvaluationConfig()


class N2VRecipe(_RecipeBase):
    task: Literal["n2v"]
    masked_fraction: float = Field(0.002, gt=0, le=0.05)
    neighbourhood: int = Field(5, ge=3, le=11)
    n2v2: bool = False
    noise: tuple[float, float] = Field((1.0, 0.05), description="Poisson gain and Gaussian sigma of the noisy inputs")
    bin: int = Field(1, ge=1, le=8, description="as CARE's: the clean reference is the bin x bin mean of the image")
    evaluation: EvaluationConfig = EvaluationConfig()


class DetectionRecipe(_RecipeBase):
    """Boxes from YOLO labels (data folder labels/*.txt) or derived from instance masks (masks/)."""

    task: Literal["detection"]
    classes: tuple[str, ...] = ("nucleus",)
    stride: int = Field(4, ge=1, description="output stride of the head maps: a power of two <= 2**model.depth")
    min_visible: float = Field(0.5, gt=0, le=1, description="a box cut by a patch border stays a target when this "
                                                             "fraction of its area is inside the patch")
    iou_threshold: float = Field(0.5, gt=0, le=1, description="NMS IoU threshold (also in the exported graph)")
    score_threshold: Optional[float] = Field(None, ge=0, lt=1, description="the package's score threshold; null: "
                                             "the best-F1 threshold (IoU 0.5) on the validation split")
    max_detections: int = Field(1000, ge=1, le=100000,
                                description="per image, all classes together: the package's fixed output capacity "
                                            "(rows beyond the detections are padding with score 0)")

    @model_validator(mode="after")
    def _stride_fits_depth(self) -> "DetectionRecipe":
        if self.stride & (self.stride - 1) or self.stride > 2**self.model.depth:
            raise ValueError(f"stride {self.stride} must be a power of two <= 2**model.depth = {2**self.model.depth}")
        return self


class StarDistRecipe(_RecipeBase):
    """Star-convex polygons from instance masks (masks/): probability + ray distances, NMS in the runtime."""

    task: Literal["stardist"]
    n_rays: int = Field(32, ge=3, le=256)
    grid: int = Field(2, ge=1, le=8, description="subsampling of the output raster (a power of two)")
    head_features: int = Field(128, ge=1, le=1024, description="channels of the convolution after the U-Net")
    dist_weight: float = Field(0.2, gt=0, description="weight of the distance loss next to the probability BCE")
    prob_threshold: Optional[float] = Field(None, gt=0, lt=1, description="null: optimized on the validation split")
    nms_threshold: Optional[float] = Field(None, ge=0, lt=1, description="null: optimized on the validation split")
    border: int = Field(2, ge=0, description="post-processing drops candidates this many grid pixels from the border")

    @model_validator(mode="after")
    def _grid_fits(self) -> "StarDistRecipe":
        step = 2**self.model.depth * self.grid
        if self.grid & (self.grid - 1):
            raise ValueError(f"grid {self.grid} must be a power of two (1, 2, 4 or 8)")
        if any(p % step for p in self.data.patch_size) or len(self.data.patch_size) != 2:
            raise ValueError(f"data.patch_size {self.data.patch_size} must be 2D and divisible by 2**model.depth * "
                             f"grid = {step}")
        return self


AnyRecipe = Union[SegmentationRecipe, CareRecipe, N2VRecipe, DetectionRecipe, StarDistRecipe]
Recipe = Annotated[AnyRecipe, Field(discriminator="task")]
RECIPES: tuple[type[_RecipeBase], ...] = get_args(AnyRecipe)
# the `task` discriminator of each recipe class: the id its TrainTask (biozoo.zoo.tasks) is registered under
TASK_IDS: tuple[str, ...] = tuple(get_args(r.model_fields["task"].annotation)[0] for r in RECIPES)


class _RecipeFile(BaseModel):
    recipe: Recipe


def parse_recipe(data: dict[str, Any], source: str = "recipe") -> AnyRecipe:
    """Validate a recipe dict; errors list each wrong YAML path with what was expected."""
    try:
        return _RecipeFile(recipe=data).recipe
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = [str(p) for p in err["loc"][1:] if str(p) not in TASK_IDS]
            lines.append(f"  {'.'.join(loc) or '(top level)'}: {err['msg']} (got {err.get('input')!r})")
        raise TrainingError(f"{source} is not a valid recipe:\n" + "\n".join(lines)) from None


def load_recipe(path: Union[str, Path]) -> AnyRecipe:
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"recipe '{path}' does not exist; see specs/recipes/ for examples")
    data = load_yaml_file(path, "recipe", error=TrainingError)  # bounded size, aliases and nesting
    if not isinstance(data, dict):
        raise TrainingError(f"recipe '{path}' must be a mapping of settings; got {type(data).__name__}")
    return parse_recipe(data, str(path))
