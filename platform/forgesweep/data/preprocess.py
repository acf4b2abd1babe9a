"""Image decoding and normalisation shared by training, evaluation and serving.

Serving imports these functions rather than re-writing them, so a served score equals the
offline score for the same image.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from forgesweep.errors import DataError

# Frames are mapped to [-1, 1]; a full-size pretrained backbone brings its own statistics.
MEAN = 0.5
STD = 0.5


def resize_rgb(image: Image.Image, size: int) -> np.ndarray:
    """A PIL image as an ``[size, size, 3]`` uint8 RGB array (bilinear resize): the one resize
    training, evaluation and serving share."""
    image = image.convert("RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def load_image(source: Union[str, Path, bytes], size: int) -> np.ndarray:
    """Decode an image file (or its bytes) to an ``[size, size, 3]`` uint8 RGB array.

    Raises:
        DataError: naming the file when it is missing or not a readable image.
    """
    name = "<bytes>" if isinstance(source, bytes) else str(source)
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
            return resize_rgb(img, size)
    except FileNotFoundError:
        raise DataError(f"frame not found: {name}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:  # PIL: SyntaxError for some damaged PNGs
        raise DataError(f"unreadable frame {name}: {exc}") from None


def load_mask(path: Union[str, Path], size: int) -> np.ndarray:
    """Decode a manipulation mask to a ``[size, size]`` uint8 array of 0/1 (nearest resize).

    Raises:
        DataError: naming the file when it is missing or not a readable image.
    """
    try:
        with Image.open(path) as img:
            img = img.convert("L")
            if img.size != (size, size):
                img = img.resize((size, size), Image.NEAREST)
            return (np.asarray(img, dtype=np.uint8) >= 128).astype(np.uint8)
    except FileNotFoundError:
        raise DataError(f"mask not found: {path}") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"unreadable mask {path}: {exc}") from None


def verify_image(path: Union[str, Path]) -> None:
    """Check that ``path`` is a complete, readable image without decoding all its pixels.

    Raises:
        DataError: naming the file when it is missing, truncated or not an image.
    """
    try:
        with Image.open(path) as img:
            img.verify()
    except FileNotFoundError:
        raise DataError(f"frame not found: {path}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"unreadable frame {path}: {exc}") from None


def to_model_input(images: Union[np.ndarray, torch.Tensor]) -> torch.Tensor:
    """uint8 ``[H, W, 3]`` or ``[N, H, W, 3]`` (or channels-first tensors) -> normalised float CHW."""
    t = torch.as_tensor(images)
    if t.dtype != torch.uint8:
        raise TypeError(f"expected uint8 images, got {t.dtype}")
    if t.shape[-1] == 3 and t.ndim in (3, 4):
        t = t.movedim(-1, -3)
    return (t.float() / 255.0 - MEAN) / STD
