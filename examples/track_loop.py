"""Your own PyTorch loop, logged to tlq: `python examples/track_loop.py`.

A plain training loop (timm's tiny `test_resnet`, from random init, on scikit-learn's handwritten digits: no
download, a few seconds on a CPU) wrapped in `tlq.client.track`. The run becomes a tlq job of the task
`external`: `tlq jobs`, `tlq show ID`, `tlq results`, `tlq compare`, `tlq plot ID --metric train_loss` and
`tlq ui` show it like any other job, with its metrics and the files it kept.

Only the `with track(...)` line, `run.log` and `run.artifact` are tlq; the rest is the loop you already have.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from tlq.client import track


def digits(size: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """scikit-learn's 8x8 digit scans as 3-channel ``size`` x ``size`` tensors: 1,500 to train on, the rest to
    validate on."""
    data = load_digits()
    images = torch.tensor(data.images / 16.0, dtype=torch.float32).unsqueeze(1)
    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    labels = torch.tensor(data.target)
    order = torch.from_numpy(np.random.default_rng(0).permutation(len(labels)))
    images, labels = images[order], labels[order]
    return images[:1500], labels[:1500], images[1500:], labels[1500:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60, help="Optimizer steps.")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--eval-every", type=int, default=20, help="Validate every N steps (and at the end).")
    args = parser.parse_args()

    torch.manual_seed(0)
    train_x, train_y, val_x, val_y = digits()
    model = timm.create_model("test_resnet", pretrained=False, num_classes=10)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    params = {"lr": args.lr, "batch_size": args.batch_size, "steps": args.steps, "optimizer": "AdamW"}

    with track("digits-loop", backbone="test_resnet", params=params, tags={"dataset": "sklearn-digits"}) as run:
        print(f"tracking as tlq job {run.id}", flush=True)
        for step in range(1, args.steps + 1):
            model.train()
            batch = torch.randint(len(train_y), (args.batch_size,))
            logits = model(train_x[batch])
            loss = F.cross_entropy(logits, train_y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            train_acc = (logits.argmax(1) == train_y[batch]).float().mean()
            run.log(step=step, train_loss=loss.item(), train_acc=train_acc.item())
            if step % args.eval_every == 0 or step == args.steps:
                model.eval()
                with torch.no_grad():
                    val_logits = model(val_x)
                val_loss = F.cross_entropy(val_logits, val_y).item()
                val_acc = (val_logits.argmax(1) == val_y).float().mean().item()
                run.log(step=step, val_loss=val_loss, val_acc=val_acc)
                print(f"step {step}: train_loss {loss.item():.3f}, val_acc {val_acc:.3f}", flush=True)
        with tempfile.TemporaryDirectory() as folder:
            weights = Path(folder) / "digits_resnet.pt"
            torch.save(model.state_dict(), weights)
            run.artifact(weights, kind="model")
    print(f"done: `tlq show {run.id}`, `tlq plot {run.id} --metric train_loss`")


if __name__ == "__main__":
    main()
