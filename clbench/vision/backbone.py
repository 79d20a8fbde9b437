"""Torchvision's ImageNet MobileNetV2, frozen, and its features for one CIFAR image.

The weights are loaded the normal torchvision way, `mobilenet_v2(weights=IMAGENET1K_V1)`,
which reads `<torch hub dir>/checkpoints/mobilenet_v2-b0353104.pth` and downloads it there
when it is missing. Offline, the same file comes from the data root
(`<data_root>/weights/`, see shared/data/SOURCES.md) and is copied into the hub cache with
`torch.hub.download_url_to_file(file://..., hash_prefix=...)`, so torch.hub's own hash
check verifies the copy. torchvision does not check the hash of a file already in the hub
cache, so `ensure_weights` checks it on every load: a wrong file is refused by name before
anything is computed from it.

The hub cache is torch's default (`$TORCH_HOME/hub`, `~/.cache/torch/hub`), not
`$CLBENCH_CACHE`: it is where torchvision looks and where a user's other torchvision code
already keeps this file, and it holds an input (the published weights), not a value
derived by clbench.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from clbench.errors import CorruptDataError, DataNotFoundError

BACKBONES = ("mobilenet_v2",)
WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"
HASH_PREFIX = "b0353104"  # what torchvision's file name carries and torch.hub checks
DIM = 1280  # channels of MobileNetV2's last feature map (its classifier's input)
STRIDE = 32  # output stride of `features`: a R x R input gives a (R/32) x (R/32) map
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def sha256_file(path: Path) -> str:
    # The data loaders' hasher; imported here because scenarios.download imports the scenario
    # package, whose CIFAR feature stream imports this module.
    from clbench.scenarios.download import sha256_file as sha256

    return sha256(path)


def hub_checkpoint() -> Path:
    """Where torchvision looks for the weights (torch.hub.get_dir() honours $TORCH_HOME)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILE


def ensure_weights(data_root: Path, download: bool) -> tuple[Path, str]:
    """(path of the verified weights in the hub cache, its SHA-256), copying them from the
    data root when the hub cache lacks them. With no copy anywhere and downloads on, the path
    returned does not exist yet and torchvision downloads it (hash-checked) when loading."""
    dst, src = hub_checkpoint(), Path(data_root) / "weights" / WEIGHTS_FILE
    if not dst.is_file() and src.is_file():
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:  # urlopen reads file:// URLs; the hash is checked before the file is moved in place
            torch.hub.download_url_to_file(src.resolve().as_uri(), str(dst), hash_prefix=HASH_PREFIX, progress=False)
        except RuntimeError as exc:
            raise CorruptDataError(
                f"refusing MobileNetV2 weights {src}: SHA-256 does not start with {HASH_PREFIX} ({exc})"
            ) from None
    if dst.is_file():
        sha = sha256_file(dst)
        if not sha.startswith(HASH_PREFIX):
            raise CorruptDataError(
                f"refusing MobileNetV2 weights {dst}: SHA-256 {sha[:16]}... does not start with "
                f"{HASH_PREFIX} (delete the file; a correct copy is taken from {src})"
            )
        return dst, sha
    if not download:
        raise DataNotFoundError(
            f"MobileNetV2 weights {WEIGHTS_FILE} not found: expected at {src} (copied from there into "
            f"the torch hub cache {dst}) or already at {dst}; downloads are off"
        )
    return dst, ""


def load_backbone(name: str, data_root: Path, download: bool) -> tuple[nn.Module, str]:
    """(MobileNetV2 `features`, frozen and in eval mode, on the CPU; the weights' SHA-256)."""
    if name not in BACKBONES:
        raise ValueError(f"bad backbone {name!r}; accepted: {', '.join(BACKBONES)}")
    from torchvision.models import MobileNet_V2_Weights, mobilenet_v2

    path, sha = ensure_weights(data_root, download)
    try:
        model = mobilenet_v2(weights=MobileNet_V2_Weights.IMAGENET1K_V1)
    except OSError as exc:  # URLError included: the download itself failed
        raise DataNotFoundError(
            f"MobileNetV2 weights {WEIGHTS_FILE} could not be downloaded to {path} ({exc}); "
            f"put the file at {Path(data_root) / 'weights' / WEIGHTS_FILE}"
        ) from None
    sha = sha or sha256_file(path)  # downloaded just now, hash-checked by torch.hub
    features = model.features.eval().requires_grad_(False)
    return features, sha


def preprocess(image: torch.Tensor, resolution: int) -> torch.Tensor:
    """uint8 [32, 32, 3] -> float32 [1, 3, R, R]: bilinear resize, ImageNet normalization.

    Every accepted R upsamples, so antialiasing (a low-pass filter for downsampling) is off:
    it would only change rounding. Normalization is per-channel affine, so it commutes with
    the bilinear resize; it is applied after it, as torchvision's presets do.
    """
    x = image.permute(2, 0, 1).unsqueeze(0).float().div_(255.0)
    x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=False)
    return (x - IMAGENET_MEAN) / IMAGENET_STD


def extract(features: nn.Module, image: torch.Tensor, resolution: int, kind: str) -> torch.Tensor:
    """One image alone (a batch of one): pooled [1280] (torchvision's classifier input, the
    spatial mean of the last map) or tokens [(R/32)^2, 1280] (the map, row-major)."""
    with torch.inference_mode():
        fmap = features(preprocess(image, resolution))  # [1, 1280, R/32, R/32]
        if kind == "pooled":
            return F.adaptive_avg_pool2d(fmap, 1).flatten()  # exactly MobileNetV2.forward's pooling
        return fmap[0].flatten(1).T.contiguous()
