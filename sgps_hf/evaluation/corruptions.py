"""Image corruptions for the domain-shift criterion, applied to uint8 query images [N, 3, H, W].

Each corruption mimics a shift a deployed medical classifier meets: out-of-focus optics (blur),
sensor noise (gaussian noise), under-/over-exposure or washed-out scans (contrast), and lossy
re-encoding by PACS or messaging apps (JPEG). ``severity`` runs from 1 (mild) to 5 (strong), with
parameters in the spirit of ImageNet-C, scaled to the small inputs of the default synthesizer. Every
corruption is a pure function of its inputs and ``seed``, so all methods see identical pixels.
"""

from __future__ import annotations

from typing import Callable

import torch
from torchvision.io import decode_jpeg, encode_jpeg
from torchvision.transforms.functional import gaussian_blur

# severity 1..5 -> parameter of each corruption
_BLUR_SIGMA = (0.5, 0.8, 1.1, 1.5, 2.0)  # pixels (at 64 px, 1.1 already removes fine texture)
_NOISE_STD = (0.04, 0.06, 0.08, 0.12, 0.16)  # fraction of the 0..255 range
_CONTRAST_FACTOR = (0.75, 0.6, 0.45, 0.3, 0.2)  # 1 = unchanged, 0 = flat grey at the image mean
_JPEG_QUALITY = (40, 25, 15, 10, 7)


def _check(images: torch.Tensor, severity: int) -> None:
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"corruptions take uint8 images [N, 3, H, W], got {images.dtype} {tuple(images.shape)}.")
    if not 1 <= severity <= 5:
        raise ValueError(f"severity must be between 1 and 5, got {severity}.")


def blur(images: torch.Tensor, severity: int = 3, seed: int = 0) -> torch.Tensor:
    """Gaussian blur (defocus) with sigma from the severity; the kernel covers +/- 3 sigma."""
    _check(images, severity)
    sigma = _BLUR_SIGMA[severity - 1]
    kernel = 2 * int(3 * sigma + 0.5) + 1
    blurred = gaussian_blur(images.float(), [kernel, kernel], [sigma, sigma])
    return blurred.round().clamp(0, 255).to(torch.uint8)


def noise(images: torch.Tensor, severity: int = 3, seed: int = 0) -> torch.Tensor:
    """Additive gaussian pixel noise, seeded so that every method sees the same noisy images."""
    _check(images, severity)
    generator = torch.Generator().manual_seed(seed)
    std = 255.0 * _NOISE_STD[severity - 1]
    noisy = images.float() + std * torch.randn(images.shape, generator=generator)
    return noisy.round().clamp(0, 255).to(torch.uint8)


def contrast(images: torch.Tensor, severity: int = 3, seed: int = 0) -> torch.Tensor:
    """Contrast reduction towards each image's mean intensity."""
    _check(images, severity)
    factor = _CONTRAST_FACTOR[severity - 1]
    x = images.float()
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * factor + mean).round().clamp(0, 255).to(torch.uint8)


def jpeg(images: torch.Tensor, severity: int = 3, seed: int = 0) -> torch.Tensor:
    """JPEG re-encoding at a low quality (block artefacts, chroma loss)."""
    _check(images, severity)
    quality = _JPEG_QUALITY[severity - 1]
    return torch.stack([decode_jpeg(encode_jpeg(image.contiguous(), quality=quality)) for image in images])


#: Corruption name -> function(images, severity, seed).
CORRUPTIONS: dict[str, Callable[..., torch.Tensor]] = {
    "blur": blur,
    "noise": noise,
    "contrast": contrast,
    "jpeg": jpeg,
}


def corrupt(images: torch.Tensor, name: str, severity: int = 3, seed: int = 0) -> torch.Tensor:
    """Apply the corruption called ``name`` (one of :data:`CORRUPTIONS`)."""
    if name not in CORRUPTIONS:
        raise ValueError(f"Unknown corruption {name!r}; choose from {', '.join(CORRUPTIONS)}.")
    return CORRUPTIONS[name](images, severity=severity, seed=seed)
