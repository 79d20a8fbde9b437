"""Is d_model 16 enough for HOPE on 1280-d MobileNetV2 tokens? A small accuracy probe.

Real frozen ImageNet MobileNetV2 tokens (last feature map at 128 px: 4x4 = 16 tokens of 1280)
of the first 10 CIFAR-100 classes (alphabetical), 100 training and 50 test images per class
(one experience's worth of classes at a fifth of its data): hope at d_model 16 / 32 / 64, the
size control transformer_matched and a linear probe on the pooled vector, each trained 5
epochs with Adam (lr 1e-3, batch 32); test accuracy on the 500 held-out images, per seed (model
init and data order) and their mean. One thread. It measures what a width can learn in one
experience, not forgetting.

    .venv/bin/python benchmarks/features_hope_width.py   # needs CLBENCH_DATA with CIFAR100/ and weights/
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image

from clbench.models import count_parameters
from clbench.nested.hope.zoo import build_hope, build_transformer_matched
from clbench.scenarios.stream import ScenarioInfo

HERE = Path(__file__).resolve().parent
DATA = Path(os.environ.get("CLBENCH_DATA", "data"))
CLASSES, TRAIN, TEST, RES, EPOCHS, SEEDS = 10, 100, 50, 128, 5, (0, 1, 2)
MEAN, STD = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def tiles(path: Path, cols: int, n: int) -> torch.Tensor:
    sprite = np.asarray(Image.open(path).convert("RGB"))
    out = [sprite[(i // cols) * 32:(i // cols + 1) * 32, (i % cols) * 32:(i % cols + 1) * 32] for i in range(n)]
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float() / 255


@torch.no_grad()
def tokens(backbone, images: torch.Tensor) -> torch.Tensor:
    out = []
    for batch in images.split(100):
        x = F.interpolate(batch, size=RES, mode="bilinear", align_corners=False)
        out.append(backbone((x - MEAN) / STD).flatten(2).transpose(1, 2))  # [B, 16, 1280]
    return torch.cat(out)


def fit(model, x, y, xt, yt, seed: int) -> float:
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(EPOCHS):
        for idx in torch.randperm(len(y)).split(32):
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        return (model(xt).argmax(1) == yt).float().mean().item()


def main() -> None:
    torch.set_num_threads(1)
    names = sorted(p.stem for p in (DATA / "CIFAR100" / "train").glob("*.webp"))[:CLASSES]
    backbone = torchvision.models.mobilenet_v2()
    backbone.load_state_dict(torch.load(DATA / "weights" / "mobilenet_v2-b0353104.pth", weights_only=True))
    backbone = backbone.features.eval()
    xs, ys, xts, yts = [], [], [], []
    for c, name in enumerate(names):
        xs.append(tiles(DATA / "CIFAR100" / "train" / f"{name}.webp", 25, TRAIN))
        xts.append(tiles(DATA / "CIFAR100" / "test" / f"{name}.webp", 10, TEST))
        ys += [c] * TRAIN
        yts += [c] * TEST
    t0 = time.perf_counter()
    x, xt = tokens(backbone, torch.cat(xs)), tokens(backbone, torch.cat(xts))
    y, yt = torch.tensor(ys), torch.tensor(yts)
    feat_s = time.perf_counter() - t0
    info = ScenarioInfo("split_cifar100_features", "class_il", 1, CLASSES, tuple(x.shape[1:]), [list(range(CLASSES))])
    pooled = ScenarioInfo("split_cifar100_features", "class_il", 1, CLASSES, (x.shape[2],), [list(range(CLASSES))])
    runs = {f"hope d_model={d}": lambda d=d: build_hope(info, "quick", d_model=d) for d in (16, 32, 64)}
    runs["transformer_matched (to hope d=16)"] = lambda: build_transformer_matched(info, "quick")
    runs["linear probe on the pooled vector"] = lambda: torch.nn.Linear(pooled.input_shape[0], CLASSES)
    lines = ["# HOPE width on MobileNetV2 tokens: accuracy probe", "",
             "`benchmarks/features_hope_width.py` (setup in its docstring: first 10 CIFAR-100 classes, 100 train / "
             f"50 test images each, 16 tokens of 1280 at 128 px, 5 epochs). Feature extraction of "
             f"{len(y) + len(yt)} images took {feat_s:.0f} s.", "",
             f"| model | parameters | test accuracy, seeds {', '.join(map(str, SEEDS))} | mean | train s per seed |",
             "|---|---:|---|---:|---:|"]
    for label, make in runs.items():
        accs, t0 = [], time.perf_counter()
        for seed in SEEDS:
            torch.manual_seed(seed)
            model = make()
            pool = label.startswith("linear")
            accs.append(fit(model, x.mean(1) if pool else x, y, xt.mean(1) if pool else xt, yt, seed))
        lines.append(f"| {label} | {count_parameters(model):,} | {' / '.join(f'{a:.3f}' for a in accs)} | "
                     f"{sum(accs) / len(accs):.3f} | {(time.perf_counter() - t0) / len(SEEDS):.0f} |")
        print(lines[-1], flush=True)
    (HERE / "features_hope_width.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
