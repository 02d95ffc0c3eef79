"""Feature visualization: image parameterizations and the random transforms that make an ideal image robust.

An ideal image found by plain gradient descent on pixels is what the network believes, not what a person
sees: high-frequency patterns that only this network reads. The tricks of the feature-visualization
literature (Olah et al., "Feature Visualization", Distill 2017; the lucid library) each remove a way to
cheat:

- a Fourier parameterization (`Spectrum`) moves low frequencies first;
- a lower-resolution parameterization (`ImageParam` with ``param_size``) cannot hold detail finer than its grid;
- a grey parameterization holds no colour the training images never had;
- random shifts, zooms and rotations (`random_transform`) reward only features that survive them;
- a data prior (`ImagePrior`) keeps the image in the span of real images' principal components, with a Gaussian
  penalty on how far it goes: the network then chooses among images of the kind it was trained on.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Sum of absolute differences between neighbouring pixels, per image (as tf.image.total_variation)."""
    return (x[:, :, 1:, :] - x[:, :, :-1, :]).abs().flatten(1).sum(1) + (
        x[:, :, :, 1:] - x[:, :, :, :-1]
    ).abs().flatten(1).sum(1)


class Spectrum:
    """An image as a scaled Fourier spectrum: low frequencies move first, which favours natural images."""

    def __init__(self, shape: tuple[int, int, int, int], generator: torch.Generator, decay: float = 1.0) -> None:
        _, c, h, w = shape
        fy = torch.fft.fftfreq(h)[:, None]
        fx = torch.fft.rfftfreq(w)[None, :]
        freq = torch.sqrt(fx**2 + fy**2).clamp_min(1.0 / max(h, w))
        self.scale = (1.0 / freq**decay) * (h * w) ** 0.5 / 640
        self.shape = (h, w)
        self.variable = (torch.randn(1, c, h, w // 2 + 1, 2, generator=generator) * 0.01).requires_grad_(True)

    def image(self) -> torch.Tensor:
        spectrum = torch.view_as_complex(self.variable) * self.scale
        return torch.fft.irfft2(spectrum, s=self.shape, norm="ortho")


class Pixels:
    """An image as free values, one per pixel and channel (the lesson's parameterization)."""

    def __init__(self, shape: tuple[int, int, int, int], generator: torch.Generator) -> None:
        self.variable = torch.randn(shape, generator=generator).requires_grad_(True)

    def image(self) -> torch.Tensor:
        return self.variable


class ImagePrior:
    """An image as a point of the principal subspace of real images (a PCA Gaussian prior).

    The images' pixels, clipped to [0.02, 0.98], are taken to logits (the sigmoid's input, as the other
    parameterizations); the optimized values are coefficients on the leading principal components, scaled so that
    the real images have coefficients of about unit variance, and ``penalty()`` is their sum of squares.

    Args:
        images: (N, C, H, W) in [0, 1], at the side the model sees.
        components: How many principal components span the image (at most N - 1).
        generator: Seeds the small random start near the mean image.
    """

    def __init__(self, images: torch.Tensor, components: int, generator: torch.Generator) -> None:
        n = len(images)
        logits = torch.logit(images.float().clamp(0.02, 0.98)).flatten(1)
        self.shape = tuple(images.shape[1:])
        self.mean = logits.mean(0)
        logits -= self.mean
        # The components from the N x N Gram matrix, in time and memory linear in the pixels: a full SVD of 500
        # colour images at 224 x 224 took 22 s and 3.3 GB on one core. u_i' X = s_i v_i', so each row of the
        # basis is a component scaled by its spread over sqrt(N): coefficients of about unit variance.
        values, vectors = torch.linalg.eigh((logits @ logits.T).double())
        k = max(1, min(components, n - 1))
        basis = (vectors[:, -k:].flip(1).T.float() @ logits) / n**0.5
        # A component's sign is arbitrary and may differ with the LAPACK build or thread count: fix it (the
        # largest entry positive), so that a job run again elsewhere starts from the same image.
        signs = basis.gather(1, basis.abs().argmax(1, keepdim=True)).sign()
        self.basis = basis * torch.where(signs == 0, 1.0, signs)
        self.variable = (torch.randn(k, generator=generator) * 0.1).requires_grad_(True)

    def image(self) -> torch.Tensor:
        return (self.mean + self.variable @ self.basis).view(1, *self.shape)

    def penalty(self) -> torch.Tensor:
        return self.variable.pow(2).sum()


PRIOR_SIDE = 256  # the prior's grid at most (upsampled to a larger --size): 500 colour images stay under 400 MB


def load_prior_images(folder: Path, size: int, grey: bool, limit: int = 500) -> torch.Tensor:
    """Up to ``limit`` images under ``folder`` (evenly spread over the sorted list of files named as images, so the
    same ones every run, whatever the listing order), at ``min(size, PRIOR_SIDE)`` square, as (N, 1 or 3, side,
    side) in [0, 1]; unreadable files are skipped.

    Raises:
        BadInput: Fewer than two readable images.
    """
    import numpy as np
    from PIL import Image

    from tlq.errors import BadInput
    from tlq.ml.images import UnreadableImage, discover_files, load_rgb, looks_like_image

    files = [f for f in discover_files(folder) if f.problem is None]
    named = [f for f in files if looks_like_image(f.path)]
    files = named if len(named) >= 2 else files  # images without a suffix are read too, where nothing else is
    if len(files) > limit:
        files = [files[i] for i in np.linspace(0, len(files) - 1, limit).round().astype(int)]
    side = min(size, PRIOR_SIDE)
    stacked = np.empty((len(files), side, side) + (() if grey else (3,)), dtype=np.float32)
    count = 0
    for file in files:
        try:
            image = load_rgb(file.path).resize((side, side), Image.BILINEAR)
        except UnreadableImage:
            continue
        stacked[count] = np.asarray(image.convert("L") if grey else image, dtype=np.float32) / 255
        count += 1
    if count < 2:
        raise BadInput(f"--prior {folder} holds {count} readable image(s); point it at a folder of real images")
    images = torch.from_numpy(stacked[:count])
    return images[:, None] if grey else images.permute(0, 3, 1, 2)


class ImageParam:
    """The optimized image in [0, 1]: sigmoid of a pixel or Fourier parameterization.

    Args:
        kind: ``pixel`` or ``fft``.
        size: The side the model sees.
        generator: Seeds the starting values.
        param_size: The side of the optimized grid (default ``size``); a smaller grid is upsampled bilinearly,
            so the image holds no detail finer than it.
        grey: One channel repeated three times, for models trained on grey images.
        prior: Real images' principal components to optimize in instead of pixels or a spectrum.
    """

    def __init__(
        self,
        kind: str,
        size: int,
        generator: torch.Generator,
        param_size: int | None = None,
        grey: bool = False,
        prior: ImagePrior | None = None,
    ) -> None:
        self.size = size
        side = min(param_size or size, size)
        shape = (1, 1 if grey else 3, side, side)
        if prior is not None:
            self.source = prior
        else:
            self.source = Spectrum(shape, generator) if kind == "fft" else Pixels(shape, generator)
        self.variable = self.source.variable
        self.kind = kind

    def pixels(self) -> torch.Tensor:
        raw = self.source.image()
        if raw.shape[-1] != self.size:
            raw = torch.nn.functional.interpolate(
                raw, size=(self.size, self.size), mode="bilinear", align_corners=False
            )
        return torch.sigmoid(raw).expand(1, 3, self.size, self.size)

    def penalty(self) -> torch.Tensor:
        """The prior's penalty (0 without a prior)."""
        return self.source.penalty() if isinstance(self.source, ImagePrior) else torch.zeros(())

    @torch.no_grad()
    def step(self, grad: torch.Tensor, lr: float) -> None:
        """One descent step.

        Spectrum gradients vary in size from model to model by orders of magnitude, a coarse grid sums the
        gradients of every pixel it covers, and a prior's coefficient those of the whole image; there steps of a
        fixed size along the normalized gradient (lr x 0.01 RMS per value) were stable on every model tried,
        where plain steps either saturated the image or barely moved it. Full-resolution pixels take the lesson's
        plain steps.
        """
        if self.kind == "fft" or self.variable.dim() == 1 or self.variable.shape[-1] != self.size:
            self.variable -= lr * 0.01 * grad / grad.pow(2).mean().sqrt().clamp_min(1e-12)
        else:
            self.variable -= lr * grad


def random_transform(
    x: torch.Tensor, generator: torch.Generator, jitter: int = 0, scale: float = 0.0, rotate: float = 0.0
) -> torch.Tensor:
    """``x`` shifted by up to ``jitter`` pixels, zoomed by a factor in [1 - scale, 1 + scale] and turned by up to
    ``rotate`` degrees, each drawn anew per call; what leaves the frame wraps round (a shift) or repeats the
    border (a zoom or turn)."""
    if jitter:
        dy, dx = torch.randint(-jitter, jitter + 1, (2,), generator=generator).tolist()
        x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
    if scale or rotate:
        zoom = 1 + (torch.rand((), generator=generator).item() * 2 - 1) * scale
        angle = math.radians((torch.rand((), generator=generator).item() * 2 - 1) * rotate)
        cos, sin = math.cos(angle) / zoom, math.sin(angle) / zoom
        theta = torch.tensor([[[cos, -sin, 0.0], [sin, cos, 0.0]]], dtype=x.dtype, device=x.device)
        grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
        x = torch.nn.functional.grid_sample(x, grid, padding_mode="border", align_corners=False)
    return x
