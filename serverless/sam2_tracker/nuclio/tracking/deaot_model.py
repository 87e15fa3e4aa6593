"""Building DeAOT (deaotpy, a packaging of aot-benchmark with SAM-Track's engine) from
the environment: model variant, checkpoint, long-term memory settings, device.

Only what inference needs is imported (``aot.configs.default``,
``aot.networks.models``, ``aot.networks.engines``); deaotpy's stage configs create
folders in the working directory and its data loaders import torchvision, so neither
is touched.

    python -m tracking.deaot_model out.pth [--model deaott] [--seed 0]

writes seeded random weights saved as aot-benchmark saves checkpoints (for tests and
benchmarks: no official weights can be fetched on machines without internet).
"""

from __future__ import annotations

import argparse
import contextlib
import io
from dataclasses import dataclass
from pathlib import Path

import torch

from tracking.model_loading import ModelSetupError

DEAOT_MODELS = ("deaott", "deaots", "deaotb", "deaotl", "r50_deaotl", "swinb_deaotl")
# SAM-Track's defaults: a long-term memory every 9999 frames (so only the reference
# frame's), the previous frame as short-term memory.
DEFAULT_LONG_TERM_GAP = 9999
# With periodic long-term memories enabled, at most this many long-term frames are
# kept, the reference frame always among them (see tracking.deaot_engine).
DEFAULT_MAX_LONG_TERM = 4
# Seeded random DeAOT-T weights give almost the same object-vs-background logit gap
# everywhere (about -4.5 with seed 0), so their masks cover no pixel; shifting the
# decoder's object-channel bias by this much makes them cover part of the frame.
RANDOM_OBJECT_SHIFT = 4.5


@dataclass(frozen=True)
class DeaotSettings:
    """DeAOT's settings (``DEAOT_*`` variables; the device falls back to ``SAM2_DEVICE``)."""

    model: str = "deaott"
    checkpoint: str | None = None
    device: str | None = None
    long_term_gap: int = DEFAULT_LONG_TERM_GAP
    max_long_term: int = DEFAULT_MAX_LONG_TERM

    @classmethod
    def from_env(cls, env: dict[str, str]) -> DeaotSettings:
        model = (env.get("DEAOT_MODEL") or "deaott").strip()
        if model not in DEAOT_MODELS:
            raise ModelSetupError(f"DEAOT_MODEL={model!r} is not one of {', '.join(DEAOT_MODELS)}")
        settings = cls(
            model=model,
            checkpoint=env.get("DEAOT_CHECKPOINT") or None,
            device=env.get("DEAOT_DEVICE") or env.get("SAM2_DEVICE") or None,
            long_term_gap=_positive(env, "DEAOT_LONG_TERM_GAP", DEFAULT_LONG_TERM_GAP),
            max_long_term=_positive(env, "DEAOT_MAX_LONG_TERM", DEFAULT_MAX_LONG_TERM),
        )
        return settings

    def resolved_device(self) -> torch.device:
        if self.device:
            return torch.device(self.device)
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _positive(env: dict[str, str], name: str, default: int) -> int:
    text = (env.get(name) or "").strip()
    if not text:
        return default
    if not text.isdigit() or int(text) < 1:
        raise ModelSetupError(f"{name}={text!r} must be a whole number of at least 1")
    return int(text)


def deaot_config(model: str):
    """deaotpy's engine config for ``model`` (the model config plus evaluation defaults)."""
    from aot.configs.default import DefaultEngineConfig

    return DefaultEngineConfig("default", model)


def build_deaot(model: str, device: torch.device | None = None) -> torch.nn.Module:
    """The DeAOT network with deaotpy's initial weights, in eval mode on ``device``."""
    from aot.networks.models import build_vos_model

    cfg = deaot_config(model)
    # deaotpy prints a notice per layer when its CUDA correlation op is missing; the
    # pure-PyTorch fallback it then uses is said once in the startup line instead.
    with contextlib.redirect_stdout(io.StringIO()):
        network = build_vos_model(cfg.MODEL_VOS, cfg)
    return network.to(device or torch.device("cpu")).eval()


def checkpoint_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The weights in an aot-benchmark checkpoint: a state dict, possibly under a
    ``state_dict`` or ``model`` key, keys possibly prefixed ``module.`` (saved from
    DistributedDataParallel). Read with torch's weights-only unpickler, which builds
    tensors and plain containers and refuses any other object."""
    try:
        loaded = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # a refused object, a truncated or foreign file
        raise ModelSetupError(
            f"DEAOT_CHECKPOINT={str(path)!r} is not a readable weights-only checkpoint: {error}"
        ) from error
    for key in ("state_dict", "model"):
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            loaded = loaded[key]
            break
    if not isinstance(loaded, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items()
    ):
        raise ModelSetupError(f"DEAOT_CHECKPOINT={str(path)!r} holds no state dict of tensors")
    return {k.removeprefix("module."): v for k, v in loaded.items()}


def load_deaot(settings: DeaotSettings) -> torch.nn.Module:
    """DeAOT with the checkpoint's weights; every weight of the model must be there."""
    if settings.checkpoint is None:
        raise ModelSetupError(
            "DEAOT_CHECKPOINT is not set: DeAOT checkpoints are published as Google Drive "
            "links (aot-benchmark's MODEL_ZOO.md); download one and set DEAOT_CHECKPOINT"
        )
    if not Path(settings.checkpoint).is_file():
        raise ModelSetupError(f"DEAOT_CHECKPOINT={settings.checkpoint!r} is not a file")
    device = settings.resolved_device()
    network = build_deaot(settings.model, device)
    weights = checkpoint_state_dict(settings.checkpoint)
    expected = network.state_dict()
    missing = sorted(set(expected) - set(weights))
    if missing:
        raise ModelSetupError(
            f"DEAOT_CHECKPOINT lacks {len(missing)} weights of {settings.model} (first: "
            f"{missing[0]}); is it a checkpoint of another model than DEAOT_MODEL?"
        )
    wrong = [k for k in expected if weights[k].shape != expected[k].shape]
    if wrong:
        raise ModelSetupError(
            f"DEAOT_CHECKPOINT's {wrong[0]} has shape {tuple(weights[wrong[0]].shape)}, "
            f"{settings.model} needs {tuple(expected[wrong[0]].shape)}"
        )
    # Extra keys (aot-benchmark saves a few unused buffers in some releases) are ignored,
    # as deaotpy's own loader ignores them.
    network.load_state_dict({k: weights[k] for k in expected})
    return network


def make_random_deaot_checkpoint(
    path: Path, model: str = "deaott", seed: int = 0, object_shift: float = RANDOM_OBJECT_SHIFT
) -> Path:
    """Seeded random weights, saved as ``{"state_dict": ...}`` like aot-benchmark's, with
    the decoder's object-channel (ID 1) bias shifted so masks cover part of the frame."""
    torch.manual_seed(seed)
    network = build_deaot(model)
    with torch.no_grad():
        network.decoder.conv_out.bias[1] += object_shift
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": network.state_dict()}, path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description="Seeded random DeAOT weights")
    parser.add_argument("path", type=Path)
    parser.add_argument("--model", default="deaott", choices=DEAOT_MODELS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--object-shift", type=float, default=RANDOM_OBJECT_SHIFT)
    args = parser.parse_args()
    print(make_random_deaot_checkpoint(args.path, args.model, args.seed, args.object_shift))


if __name__ == "__main__":
    main()
