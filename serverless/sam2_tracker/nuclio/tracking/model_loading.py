"""Building SAM 2 from the environment: config, checkpoint (downloaded when absent), device."""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import logging
import os
import tempfile
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from sam2.build_sam import build_sam2_video_predictor
from sam2.sam2_video_predictor import SAM2VideoPredictor

from tracking.engine import Sam2StreamTracker

log = logging.getLogger(__name__)


class InfoLogger(Protocol):
    """Where setup says what it does: Nuclio's ``context.logger`` in a function, a
    ``logging.Logger`` elsewhere."""

    def info(self, message: str) -> None: ...


DEFAULT_MODEL_CFG = "configs/sam2.1/sam2.1_hiera_t.yaml"
CHECKPOINT_BASE_URL = "https://dl.fbaipublicfiles.com/segment_anything_2/092824"
# Official SAM 2.1 checkpoints per config.
OFFICIAL_CHECKPOINTS = {
    "configs/sam2.1/sam2.1_hiera_t.yaml": "sam2.1_hiera_tiny.pt",
    "configs/sam2.1/sam2.1_hiera_s.yaml": "sam2.1_hiera_small.pt",
    "configs/sam2.1/sam2.1_hiera_b+.yaml": "sam2.1_hiera_base_plus.pt",
    "configs/sam2.1/sam2.1_hiera_l.yaml": "sam2.1_hiera_large.pt",
}
# SHA-256 of each, as Meta serves them (the same files as on Meta's Hugging Face pages);
# a download that differs is refused. The specs' build steps check the same values.
OFFICIAL_CHECKSUMS = {
    "sam2.1_hiera_tiny.pt": "7402e0d864fa82708a20fbd15bc84245c2f26dff0eb43a4b5b93452deb34be69",
    "sam2.1_hiera_small.pt": "6d1aa6f30de5c92224f8172114de081d104bbd23dd9dc5c58996f0cad5dc4d38",
    "sam2.1_hiera_base_plus.pt": "a2345aede8715ab1d5d31b4a509fb160c5a4af1970f199d9054ccfb746c004c5",
    "sam2.1_hiera_large.pt": "2647878d5dfa5098f2f8649825738a9345572bae2d4350a2468587ece47dd318",
}


PRECISIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _flag(value: str | None) -> bool | None:
    if value is None or value.strip() == "":
        return None
    return value.strip().lower() in ("1", "true", "yes", "on")


class ModelSetupError(RuntimeError):
    """The model cannot be set up as configured (message says what to change)."""


def max_cond_frames(value: str | None) -> int | None:
    """``SAM2_MAX_COND_FRAMES``: at least 2 (SAM 2 keeps the closest keyframe before and
    the closest after the frame), or unset."""
    if value is None or not value.strip():
        return None
    if not value.strip().isdigit() or int(value) < 2:
        raise ModelSetupError(f"SAM2_MAX_COND_FRAMES={value!r} must be a whole number >= 2")
    return int(value)


@dataclass(frozen=True)
class ModelSettings:
    """What to load. ``hydra_overrides`` lets tests shrink the input size."""

    config: str = DEFAULT_MODEL_CFG
    checkpoint: str | None = None
    device: str | None = None
    hydra_overrides: tuple[str, ...] = field(default_factory=tuple)
    # None: on for CUDA, off for CPU (SAM 2's vos_optimized compilation; bfloat16 autocast).
    compile: bool | None = None
    precision: str | None = None
    # Objects per forward pass; None: the tracker's per-device default.
    object_batch: int | None = None
    # Keyframes that condition a frame: the N closest (SAM 2's max_cond_frames_in_attn);
    # None: the model's own setting (all, in SAM 2.1's configs).
    max_cond_frames: int | None = None

    @classmethod
    def from_env(cls, env: dict[str, str]) -> ModelSettings:
        overrides = env.get("SAM2_HYDRA_OVERRIDES", "").split()
        return cls(
            config=env.get("SAM2_MODEL_CFG") or DEFAULT_MODEL_CFG,
            checkpoint=env.get("SAM2_CHECKPOINT") or None,
            device=env.get("SAM2_DEVICE") or None,
            hydra_overrides=tuple(overrides),
            compile=_flag(env.get("SAM2_COMPILE")),
            precision=env.get("SAM2_PRECISION") or None,
            object_batch=int(env["SAM2_OBJECT_BATCH"]) if env.get("SAM2_OBJECT_BATCH") else None,
            max_cond_frames=max_cond_frames(env.get("SAM2_MAX_COND_FRAMES")),
        )

    def resolved_device(self) -> torch.device:
        if self.device:
            return torch.device(self.device)
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def resolved_compile(self) -> bool:
        if self.compile is not None:
            return self.compile
        return self.resolved_device().type == "cuda"

    def resolved_precision(self) -> torch.dtype:
        name = self.precision or (
            "bfloat16" if self.resolved_device().type == "cuda" else "float32"
        )
        if name not in PRECISIONS:
            raise ModelSetupError(f"SAM2_PRECISION={name!r} is not one of {sorted(PRECISIONS)}")
        return PRECISIONS[name]

    def model_id(self, image_size: int) -> str:
        """Names the model a state belongs to (memory from another model is meaningless)."""
        return f"{Path(self.config).stem}@{image_size}"


def checkpoint_cache_dir(env: dict[str, str]) -> Path:
    default = Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sam2-cvat-tracker"
    return Path(env.get("SAM2_CHECKPOINT_DIR") or default)


def download_official_checkpoint(
    config: str,
    cache_dir: Path,
    base_url: str = CHECKPOINT_BASE_URL,
    logger: InfoLogger = log,
    checksums: dict[str, str] = OFFICIAL_CHECKSUMS,
) -> Path:
    """The official checkpoint for ``config``, downloaded into ``cache_dir`` once and
    checked against its SHA-256."""
    name = OFFICIAL_CHECKPOINTS.get(config)
    if name is None:
        raise ModelSetupError(
            f"no official checkpoint is known for {config!r}; set SAM2_CHECKPOINT to a file"
        )
    target = cache_dir / name
    if target.is_file():
        return target
    url = f"{base_url}/{name}"
    logger.info(f"downloading {url} to {target}")
    partial_path: str | None = None
    digest = hashlib.sha256()
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        with (
            urllib.request.urlopen(url, timeout=60) as response,
            tempfile.NamedTemporaryFile(dir=cache_dir, delete=False) as partial,
        ):
            partial_path = partial.name
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                partial.write(chunk)
        if digest.hexdigest() != checksums[name]:
            raise ModelSetupError(
                f"the download of {url} has SHA-256 {digest.hexdigest()}, not the official "
                f"{checksums[name]}: refused. Download it elsewhere, check it, and set "
                "SAM2_CHECKPOINT to its path."
            )
        os.replace(partial_path, target)
    except (urllib.error.URLError, OSError, TimeoutError, ModelSetupError) as error:
        if partial_path is not None and os.path.exists(partial_path):
            os.unlink(partial_path)  # never leave a truncated or foreign checkpoint behind
        if isinstance(error, ModelSetupError):
            raise
        raise ModelSetupError(
            f"SAM2_CHECKPOINT is not set and the official checkpoint {url} could not be "
            f"downloaded into {cache_dir} ({error}). Download it elsewhere and set "
            "SAM2_CHECKPOINT to its path."
        ) from error
    return target


@contextlib.contextmanager
def root_logger_untouched() -> Iterator[None]:
    """SAM 2 logs with ``logging.info(...)`` while loading; on a root logger without
    handlers that calls ``logging.basicConfig()``, which adds a stderr handler to the
    root. Under Nuclio every line of Nuclio's own logger (which propagates to the root)
    would then be printed twice. A placeholder handler meanwhile keeps the root as it was."""
    root = logging.getLogger()
    placeholder = None
    if not root.handlers:
        placeholder = logging.NullHandler()
        root.addHandler(placeholder)
    try:
        yield
    finally:
        if placeholder is not None:
            root.removeHandler(placeholder)


def hole_filling_available() -> bool:
    """Whether SAM 2's CUDA extension ``sam2._C`` (used for filling small mask holes) is
    built. Without it SAM 2 skips hole filling, as the official predictor then does, and
    warns on every frame; callers say so once instead (``silence_missing_extension``)."""
    try:
        importlib.import_module("sam2._C")
    except ImportError:
        return False
    return True


def silence_missing_extension() -> None:
    """Drop SAM 2's per-frame "cannot import name '_C'" warning (said once at startup)."""
    warnings.filterwarnings("ignore", message="cannot import name '_C'", category=UserWarning)


def hole_filling_note() -> str:
    """Whether SAM 2 fills mask holes, for a startup line; when it cannot, its per-frame
    warning is silenced here, once."""
    if hole_filling_available():
        return "hole filling on (sam2._C)"
    silence_missing_extension()
    return "hole filling off: sam2._C is not built (the official predictor skips it too)"


def load_sam2(
    settings: ModelSettings, env: dict[str, str], logger: InfoLogger = log
) -> SAM2VideoPredictor:
    """SAM 2 exactly as ``build_sam2_video_predictor`` builds it for the official predictor."""
    checkpoint = resolved_checkpoint(settings, env, logger)
    with root_logger_untouched():
        return build_sam2_video_predictor(
            settings.config,
            ckpt_path=checkpoint,
            device=settings.resolved_device(),
            hydra_overrides_extra=list(settings.hydra_overrides),
            # SAM 2's own compiled variant: memory encoder, memory attention, prompt
            # encoder, mask decoder and image encoder under torch.compile.
            vos_optimized=settings.resolved_compile(),
        )


def resolved_checkpoint(
    settings: ModelSettings, env: dict[str, str], logger: InfoLogger = log
) -> str:
    """The checkpoint file to load: SAM2_CHECKPOINT, or the official one downloaded."""
    checkpoint = settings.checkpoint
    if checkpoint is None:
        cache_dir = checkpoint_cache_dir(env)
        return str(download_official_checkpoint(settings.config, cache_dir, logger=logger))
    if not Path(checkpoint).is_file():
        raise ModelSetupError(f"SAM2_CHECKPOINT={checkpoint!r} is not a file")
    return checkpoint


def build_tracker(
    model: SAM2VideoPredictor, settings: ModelSettings, logger: InfoLogger = log
) -> Sam2StreamTracker:
    """The tracker over ``model`` with the settings' precision and objects per pass; a
    compiled model is warmed up here, so no call waits for a compilation."""
    if settings.max_cond_frames is not None:
        model.max_cond_frames_in_attn = settings.max_cond_frames
    tracker = Sam2StreamTracker(
        model,
        settings.model_id(model.image_size),
        settings.resolved_precision(),
        max_batch=settings.object_batch,
    )
    if tracker.compiled:
        logger.info("warming up compiled SAM 2 (the first time takes minutes)")
        tracker.warm_up()
    return tracker


def load_sam2_tracker(env: dict[str, str], logger: InfoLogger = log):
    """The ``sam2`` backend (``tracking.backend``): SAM 2 from the ``SAM2_*`` variables, and
    a note on hole filling for the startup line."""
    from tracking.backend import LoadedBackend  # the seam imports this module

    settings = ModelSettings.from_env(env)
    tracker = build_tracker(load_sam2(settings, env, logger), settings, logger)
    return LoadedBackend(tracker, (hole_filling_note(),))
