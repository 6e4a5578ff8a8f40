"""Parameters of fold training: loss, schedule, crops and augmentations."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from birdpipe.evaluation.metrics import VALIDATION_METRICS
from birdpipe.models.config import ModelConfig
from birdpipe.schema import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, Probability, Section
from birdpipe.training.augment import BATCH_AUGMENTATIONS, WAVE_AUGMENTATIONS
from birdpipe.training.losses import LOSSES


class AugmentConfig(Section):
    """Each augmentation by its registered name, with the probability it is applied."""

    #: Per sample in the loader, on decoded audio (`training.augment.WAVE_AUGMENTATIONS`):
    #: gaussian_noise, pink_noise, gain, pitch_shift, time_shift, background, time_extend.
    #: Any of them switches training from cached mels to decoding the recordings.
    waveform: dict[WAVE_AUGMENTATIONS.choice(), Probability] = Field(default_factory=dict)
    #: Per batch on the training device (`training.augment.BATCH_AUGMENTATIONS`), in this
    #: order: time_mask, freq_mask (SpecAugment), mixup, cutmix.
    batch: dict[BATCH_AUGMENTATIONS.choice(), Probability] = Field(default_factory=dict)
    #: Folder of unlabeled audio mixed in as background (default: the dataset's soundscapes).
    background_dir: str | None = None
    #: Mixup / cutmix targets: element-wise max of both label vectors instead of the blend.
    mixup_max_labels: bool = True
    #: Beta(alpha, alpha) draws the mixup weight and the cutmix length.
    mixup_alpha: NonNegativeFloat = 0.5
    #: Time extension keeps a random 50-100 % of the crop at a random place and fills the
    #: rest with silence or a stretch of background audio.
    extend_fill: Literal["silence", "background"] = "silence"
    #: Signal-to-background ratio range of background mixing.
    background_snr_db: tuple[float, float] = (3.0, 30.0)

    @model_validator(mode="after")
    def _ordered(self) -> AugmentConfig:
        lo, hi = self.background_snr_db
        if lo > hi:
            raise ValueError(f"background_snr_db must be (low, high), got {self.background_snr_db}")
        return self

    def p(self, name: str) -> float:
        """Probability of a waveform or batch augmentation (0 when off)."""
        return self.waveform.get(name, self.batch.get(name, 0.0))

    @property
    def uses_waveform(self) -> bool:
        """Whether training needs decoded audio instead of the cached mels."""
        return any(p > 0 for p in self.waveform.values())

    @property
    def uses_background(self) -> bool:
        return self.p("background") > 0 or (self.p("time_extend") > 0 and self.extend_fill == "background")


class DistillConfig(Section):
    """Knowledge distillation: a pretrained teacher's scores mixed into the SED's training targets."""

    #: "birdnet": BirdNET V2.4 zero-shot, max over the window's chunks (`birdnet_scores`);
    #: None: the labels alone.
    teacher: Literal["birdnet"] | None = None
    #: target = (1 - weight) * label + weight * teacher, on the species the teacher scores
    #: except the recording's primary label, which stays 1 (species the teacher cannot score
    #: keep their label). Validation always scores against the labels.
    weight: Probability = 0.5


class TrainConfig(Section):
    model: ModelConfig = Field(default_factory=ModelConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    #: A name in `training.losses.LOSSES`: bce, weighted_bce, focal, soft_auc.
    loss: LOSSES.choice() = "bce"
    focal_gamma: NonNegativeFloat = 2.0
    secondary_weight: Probability = 0.5
    label_smoothing: Annotated[float, Field(ge=0.0, lt=0.5)] = 0.0
    rating_weights: bool = True
    #: Which windows of a recording one epoch draws: "first", "random" or "both".
    crop: Literal["first", "random", "both"] = "both"
    #: "first": the first N seconds of each recording.
    first_seconds: PositiveFloat = 5.0
    epochs: PositiveInt = 20
    batch_size: PositiveInt = 32
    lr: PositiveFloat = 1e-3
    weight_decay: NonNegativeFloat = 1e-2
    warmup_epochs: NonNegativeInt = 1
    min_lr: NonNegativeFloat = 1e-6
    #: Gradient norm clip; 0 disables it.
    grad_clip: NonNegativeFloat = 2.0
    #: Loss on the frame-wise max logits, added to the clip-wise loss with this weight.
    frame_loss_weight: NonNegativeFloat = 0.5
    #: weighted_bce: class weight (N / count) ** power.
    class_weight_power: NonNegativeFloat = 0.5
    patience: PositiveInt = 5
    #: Validation metric choosing the best epoch (`evaluation.metrics.VALIDATION_METRICS`).
    metric: VALIDATION_METRICS.choice() = "roc_auc"
    num_workers: NonNegativeInt = 0
    device: Literal["auto", "cuda", "mps", "cpu"] = "auto"
    amp: bool = True
    seed: NonNegativeInt = 42

    @model_validator(mode="after")
    def _schedule(self) -> TrainConfig:
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr {self.min_lr} exceeds lr {self.lr}")
        if self.warmup_epochs > self.epochs:
            raise ValueError(f"warmup_epochs {self.warmup_epochs} exceeds epochs {self.epochs}")
        return self


class HeadConfig(Section):
    """Classifier heads on frozen pretrained embeddings, one per fold (`training.heads`)."""

    #: Which heads to train: "logistic" (one linear layer) and/or "mlp" (one hidden layer).
    kinds: tuple[Literal["logistic", "mlp"], ...] = ("logistic", "mlp")
    hidden: PositiveInt = 512
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.3
    epochs: PositiveInt = 60
    batch_size: PositiveInt = 128
    lr: PositiveFloat = 1e-3
    weight_decay: NonNegativeFloat = 1e-4
    #: Target of a secondary label.
    secondary_weight: Probability = 0.5
    #: Mixup of window embeddings (probability per batch sample; targets: max of both).
    mixup: Probability = 0.5
    seed: NonNegativeInt = 42


class PseudoLabelConfig(Section):
    """Noisy-student rounds on unlabeled soundscapes (`training.pseudo`): the blend of BirdNET
    zero-shot and the embedding heads labels their windows, and the heads retrain on them."""

    #: Label-and-retrain rounds; 0 turns pseudo-labelling off.
    rounds: NonNegativeInt = 1
    #: Folders below the dataset root whose recordings are labelled (those present are used;
    #: a `train_soundscapes` folder with labels of its own is validation data and is skipped).
    dirs: tuple[str, ...] = ("unlabeled_soundscapes", "train_soundscapes")
    #: A window joins training when the teacher's top score reaches this.
    min_confidence: Probability = 0.5
    #: Targets: the teacher's probabilities raised to this power (> 1 sharpens).
    power: PositiveFloat = 1.0
    #: Sample weight of a pseudo-labelled window (a labelled one weighs 1).
    weight: Probability = 0.5
