"""Train the bundled digits models on CPU: a class-conditional pixel diffusion model and a digit classifier.

Data: scikit-learn's bundled handwritten digits (1797 images, 8x8, 17 grey levels), scaled to [-1, 1] and
split 80/20 (stratified, seed 0). Both models train on the 80% split; the classifier's accuracy on the
held-out 20% is the "real digits" reference that generated samples are judged against.

* Classifier (``rewards.DigitClassifier``): small CNN, cross-entropy, one-pixel shift and small-noise
  augmentation so it reads generated digits as well as real ones.
* Diffusion model (``pipelines.digits.build_digits_unet``): DDPM epsilon-prediction loss (Ho et al. 2020,
  eq. 14) under the cosine schedule (Nichol & Dhariwal 2021, eq. 17), labels dropped to the null class 10
  with probability 0.1 for classifier-free guidance (Ho & Salimans 2022, Alg. 1), EMA of the weights.

Writes ``pipelines/assets/digits`` (a ``DigitsPipeline`` directory) and ``rewards/assets/digits-classifier``
(safetensors), plus ``pipelines/assets/digits/training.json``. 18 minutes on 2 CPU cores (2000 steps)::

    .venv/bin/pip install -e '.[train]' && .venv/bin/python scripts/train_digits.py
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from tqdm import tqdm

from pipelines.digits import DIGITS_MODEL, NULL_CLASS, DigitsPipeline, build_digits_unet
from rewards import DIGITS_CLASSIFIER, DigitClassifier


def load_digit_splits(seed: int = 0) -> dict[str, torch.Tensor]:
    """scikit-learn's digits as (N, 1, 8, 8) float32 in [-1, 1], split 80/20 stratified."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    images = data.images.astype(np.float32) / 8.0 - 1.0  # grey levels 0..16 -> [-1, 1]
    x_tr, x_te, y_tr, y_te = train_test_split(
        images, data.target, test_size=0.2, stratify=data.target, random_state=seed
    )
    as_x = lambda a: torch.from_numpy(a).unsqueeze(1)  # noqa: E731
    as_y = lambda a: torch.from_numpy(a).long()  # noqa: E731
    return {"x_train": as_x(x_tr), "y_train": as_y(y_tr), "x_test": as_x(x_te), "y_test": as_y(y_te)}


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Shift each image by up to one pixel (zero = background -1 padding) and add N(0, 0.05^2) noise."""
    padded = F.pad(x, (1, 1, 1, 1), value=-1.0)
    dx, dy = torch.randint(0, 3, (2,), generator=gen).tolist()
    h, w = x.shape[-2:]
    return padded[..., dy : dy + h, dx : dx + w] + 0.05 * torch.randn(x.shape, generator=gen)


def train_classifier(data: dict, epochs: int, seed: int) -> tuple[DigitClassifier, float]:
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = DigitClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    x, y = data["x_train"], data["y_train"]
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=epochs * math.ceil(len(x) / 64))
    for _ in tqdm(range(epochs), desc="classifier epochs"):
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 64):
            idx = order[i : i + 64]
            loss = F.cross_entropy(model(augment(x[idx], gen)), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model.predict(data["x_test"]) == data["y_test"]).float().mean().item()
    return model, accuracy


def train_diffusion(data: dict, steps: int, batch: int, lr: float, seed: int) -> tuple[torch.nn.Module, list]:
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    unet = build_digits_unet()
    ema = copy.deepcopy(unet).requires_grad_(False)
    noise_scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    alphas_cumprod = noise_scheduler.alphas_cumprod
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.0)
    warmup = min(200, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: min(1.0, (k + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(k / steps, 1.0)))
    )
    x_all, y_all = data["x_train"], data["y_train"]
    losses, running = [], None
    bar = tqdm(range(steps), desc="diffusion steps")
    for k in bar:
        idx = torch.randint(0, len(x_all), (batch,), generator=gen)
        x0, labels = x_all[idx], y_all[idx].clone()
        labels[torch.rand(batch, generator=gen) < 0.1] = NULL_CLASS
        t = torch.randint(0, 1000, (batch,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        abar = alphas_cumprod[t].view(-1, 1, 1, 1)
        x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
        loss = F.mse_loss(unet(x_t, t, class_labels=labels).sample, noise)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        sched.step()
        decay = min(0.999, (1 + k) / (10 + k))
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), unet.parameters()):
                p_ema.lerp_(p, 1 - decay)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if k % 50 == 0 or k == steps - 1:
            bar.set_postfix(loss=f"{running:.4f}")
            losses.append((k, running))
    return ema, losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=2000, help="diffusion training steps")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--classifier-epochs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model-dir", type=Path, default=DIGITS_MODEL)
    parser.add_argument("--classifier-dir", type=Path, default=DIGITS_CLASSIFIER)
    args = parser.parse_args()

    data = load_digit_splits(args.seed)
    start = time.time()
    classifier, accuracy = train_classifier(data, args.classifier_epochs, args.seed)
    print(f"classifier held-out accuracy on real digits: {accuracy:.4f}")
    classifier.save_pretrained(args.classifier_dir, safe_serialization=True)
    classifier_seconds = time.time() - start

    start = time.time()
    unet, losses = train_diffusion(data, args.steps, args.batch, args.lr, args.seed)
    diffusion_seconds = time.time() - start
    # Samplers start from pure noise (t = 999; diffusers' "leading" default would start at t = 950) and
    # clip the data prediction to the data range [-1, 1] (DDPM's clip_sample). The cosine schedule ends at
    # alpha_bar(999) = 2.4e-9, where x0 = (x - sigma eps) / alpha amplifies the network's error ~2e4-fold:
    # unclipped 20-step samples reach |x| ~ 5e3 and saturate every pixel (docs/benchmarks/digits.md).
    scheduler = DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule="squaredcos_cap_v2",
        timestep_spacing="linspace",
        clip_sample=True,
    )
    DigitsPipeline(unet=unet, scheduler=scheduler).save_pretrained(args.model_dir, safe_serialization=True)
    report = {
        "data": f"sklearn.datasets.load_digits, 80/20 stratified split, seed {args.seed}",
        "train_images": len(data["x_train"]),
        "test_images": len(data["x_test"]),
        "classifier_test_accuracy": accuracy,
        "classifier_seconds": round(classifier_seconds, 1),
        "diffusion_steps": args.steps,
        "diffusion_batch": args.batch,
        "diffusion_seconds": round(diffusion_seconds, 1),
        "diffusion_parameters": sum(p.numel() for p in unet.parameters()),
        "loss_curve": [(k, round(v, 5)) for k, v in losses],
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    (args.model_dir / "training.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"saved {args.model_dir} and {args.classifier_dir} ({diffusion_seconds / 60:.1f} min diffusion)")


if __name__ == "__main__":
    main()
