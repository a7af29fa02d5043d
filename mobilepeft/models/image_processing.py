"""MobileVLM image preprocessing ("pad" aspect-ratio mode, docs/training.md).

MobileVLM checkpoints are trained with ``image_aspect_ratio: "pad"``: the image is letterboxed
onto a square canvas of the CLIP mean colour before CLIP's resize/crop/normalise. Doing the
same here (rather than a plain resize or crop) keeps the pixels a fine-tuned model sees
identical to what the base checkpoint saw, and keeps nothing of the image cropped away.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# int(255 * mean) per channel, as MobileVLM/LLaVA's expand2square computes it.
PAD_COLOR = (122, 116, 104)


def _pad_to_square(image: Image.Image) -> Image.Image:
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new("RGB", (side, side), PAD_COLOR)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


def _resize_shortest_side(image: Image.Image, size: int) -> Image.Image:
    # Same rule as CLIPImageProcessor: the short side becomes ``size``, the long side scales with it.
    width, height = image.size
    short, long = min(width, height), max(width, height)
    new_short, new_long = size, int(size * long / short)
    new_size = (new_short, new_long) if width <= height else (new_long, new_short)
    if new_size == image.size:
        return image
    return image.resize(new_size, resample=Image.Resampling.BICUBIC)


def _center_crop(image: Image.Image, size: int) -> Image.Image:
    width, height = image.size
    left, top = (width - size) // 2, (height - size) // 2
    if (left, top, width, height) == (0, 0, size, size):
        return image
    return image.crop((left, top, left + size, top + size))


def preprocess_images(images: list[Image.Image], image_size: int) -> torch.Tensor:
    """PIL images -> normalised ``pixel_values`` of shape [N, 3, image_size, image_size], float32."""
    mean = np.asarray(CLIP_MEAN, dtype=np.float32)
    std = np.asarray(CLIP_STD, dtype=np.float32)
    arrays = []
    for image in images:
        square = _pad_to_square(image.convert("RGB"))
        resized = _center_crop(_resize_shortest_side(square, image_size), image_size)
        pixels = np.asarray(resized, dtype=np.float32) / 255.0
        arrays.append(((pixels - mean) / std).transpose(2, 0, 1))
    if not arrays:
        return torch.empty(0, 3, image_size, image_size, dtype=torch.float32)
    return torch.from_numpy(np.stack(arrays)).contiguous()
