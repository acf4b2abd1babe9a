"""Four forgery methods mirroring FaceForensics++ (Rössler et al., ICCV 2019), drawn procedurally.

Each method is ``fn(target, source, rng) -> (fake, mask)`` on clean rendered frames: ``fake`` is a
float32 HxWx3 image in [0, 1] (the camera in :func:`faces.capture` is applied afterwards, to real
and fake frames alike) and ``mask`` a uint8 HxW map, 255 where pixels were manipulated.

The methods leave deliberately *different* traces -- different regions and frequency bands -- so a
detector that learns one method's decision rule does not automatically catch another, and learning a
later method can overwrite an earlier one (the forgetting a continual benchmark has to show):

* ``Deepfakes``: the whole face below the brows from another identity, low-pass (a generator working
  at lower resolution), blended with a wide soft boundary and a colour mismatch.
* ``Face2Face``: eye and mouth boxes re-enacted from the same person with another expression,
  resampled (blur), misaligned by a few pixels and pasted with a hard rectangular seam and a gain step.
  (A plain 2-3 px mouth shift was not learnable at 64 px; the seam and blur are.)
* ``FaceSwap``: a graphics swap -- the inner face of another identity, slightly rescaled, relit (another
  light direction and exposure) and over-sharpened, pasted with a hard aliased edge whose one-pixel
  outline the rasterised mesh leaves dark.
* ``NeuralTextures``: the mouth region re-rendered through a nearest-neighbour upsampler with a
  checkerboard, the periodic high-frequency trace of transposed-convolution decoders.

Blur widths and shifts scale with the frame size (tuned at 64 px); the one-pixel seam and the period-2
checkerboard stay one and two pixels, as a decoder's traces do at any output size.
"""

from __future__ import annotations

from typing import Callable, Literal

import numpy as np
from PIL import Image

from forgesweep.data.synthetic.faces import RenderedFrame

ForgeryFn = Callable[[RenderedFrame, RenderedFrame, np.random.Generator], tuple[np.ndarray, np.ndarray]]


def blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of an HxW or HxWxC float array (reflecting borders)."""
    if sigma <= 0:
        return img
    r = max(1, int(np.ceil(3 * sigma)))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    out = img
    for axis in (0, 1):
        pad = [(0, 0)] * img.ndim
        pad[axis] = (r, r)
        p = np.pad(out, pad, mode="reflect")
        n = img.shape[axis]
        out = sum(w * np.take(p, np.arange(i, i + n), axis=axis) for i, w in enumerate(k))
    return out.astype(np.float32)


def _per_channel(img: np.ndarray, fn: Callable[[Image.Image], Image.Image]) -> np.ndarray:
    # PIL's float mode ("F") resamples without rounding to 8 bits.
    chans = [np.asarray(fn(Image.fromarray(np.ascontiguousarray(img[..., c], dtype=np.float32))))
             for c in range(img.shape[-1])]
    return np.stack(chans, axis=-1).astype(np.float32)


def resample(img: np.ndarray, factor: float, down: Image.Resampling = Image.Resampling.BILINEAR,
             up: Image.Resampling = Image.Resampling.BILINEAR) -> np.ndarray:
    """Shrink ``img`` by ``factor`` and enlarge it back: the detail a low-resolution generator loses."""
    h, w = img.shape[:2]
    small = (max(1, round(w / factor)), max(1, round(h / factor)))
    return _per_channel(img, lambda im: im.resize(small, down).resize((w, h), up))


def warp(img: np.ndarray, shift: tuple[float, float], scale: float, centre: tuple[float, float]) -> np.ndarray:
    """Scale ``img`` about ``centre`` and shift it (pixels), bilinear: a misaligned re-enactment warp."""
    h, w = img.shape[:2]
    cx, cy = centre
    # PIL maps each output pixel back to an input position: in = centre + (out - centre - shift) / scale.
    data = (1 / scale, 0.0, cx - (cx + shift[0]) / scale, 0.0, 1 / scale, cy - (cy + shift[1]) / scale)
    return _per_channel(img, lambda im: im.transform((w, h), Image.Transform.AFFINE, data,
                                                     resample=Image.Resampling.BILINEAR))


def _centre(region: np.ndarray) -> tuple[float, float]:
    ys, xs = np.nonzero(region > 0.5)
    if len(xs) == 0:
        return region.shape[1] / 2.0, region.shape[0] / 2.0
    return float(xs.mean()), float(ys.mean())


def _to_mask(alpha: np.ndarray, threshold: float = 0.1) -> np.ndarray:
    return np.where(alpha > threshold, 255, 0).astype(np.uint8)


def _composite(base: np.ndarray, overlay: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha[..., None]
    return np.clip(base * (1 - a) + overlay * a, 0.0, 1.0).astype(np.float32)


def _px(frame: RenderedFrame) -> float:
    """Pixels per 64-pixel unit: the methods are tuned at 64 px and scale with the frame."""
    return frame.image.shape[0] / 64.0


def deepfakes(target: RenderedFrame, source: RenderedFrame, rng: np.random.Generator):
    """Autoencoder-style swap: the source's face (already aligned to the target's pose) blended in.

    Args:
        target: the frame whose face is replaced.
        source: another identity's face rendered in the target's pose (``faces.swap_identity``).
        rng: draws the generator resolution, the colour mismatch and the blend width.

    Returns:
        ``(fake, mask)``: float32 HxWx3 in [0, 1] and uint8 HxW (255 = manipulated).
    """
    k = _px(target)
    # The generator works at a fraction of the frame's resolution: the face comes out smooth.
    face = resample(source.image, rng.uniform(2.0, 2.6), up=Image.Resampling.BICUBIC)
    # Colour transfer is imperfect: a per-channel gain left over on the face.
    face = face * rng.uniform(0.88, 1.12, 3).astype(np.float32)
    alpha = np.clip(blur(target.regions["hull"], rng.uniform(1.5, 2.5) * k) * 1.15, 0.0, 1.0)
    return _composite(target.image, face, alpha), _to_mask(alpha)


def face2face(target: RenderedFrame, source: RenderedFrame, rng: np.random.Generator):
    """Expression re-enactment: eye and mouth boxes taken from the same person's other expression.

    Args:
        target: the frame being re-enacted.
        source: the target identity rendered in the target's pose with another expression
            (``faces.with_expression``).
        rng: draws the resampling factor, the misalignment and the gain step.

    Returns:
        ``(fake, mask)`` as for :func:`deepfakes`.
    """
    k = _px(target)
    region = np.maximum(target.regions["eyes"], target.regions["mouth"])
    hard = (region > 0.5).astype(np.float32)  # rectangular seam, no feathering
    patch = resample(source.image, rng.uniform(1.8, 2.4))
    angle = rng.uniform(0, 2 * np.pi)
    dist = rng.uniform(1.5, 2.5) * k
    patch = warp(patch, (dist * np.cos(angle), dist * np.sin(angle)), rng.uniform(1.06, 1.14),
                 _centre(target.regions["mouth"]))
    # Brightness of the re-rendered patch does not match its surroundings: a step at the seam.
    patch = patch * (1.0 + rng.choice([-1.0, 1.0]) * rng.uniform(0.07, 0.12))
    return _composite(target.image, patch, hard), _to_mask(hard, 0.5)


def faceswap(target: RenderedFrame, source: RenderedFrame, rng: np.random.Generator):
    """Graphics-based swap: a 3D-fitted inner face pasted with a hard edge and the wrong lighting.

    Args:
        target: the frame whose inner face is replaced.
        source: another identity's face rendered in the target's pose (``faces.swap_identity``).
        rng: draws the scale mismatch, the lighting mismatch, the sharpening and the seam's darkness.

    Returns:
        ``(fake, mask)`` as for :func:`deepfakes`.
    """
    h, w = target.image.shape[:2]
    hard = (target.regions["inner"] > 0.5).astype(np.float32)  # binary: an aliased, unblended edge
    face = warp(source.image, (0.0, 0.0), rng.uniform(1.05, 1.12), _centre(hard))
    # The model is lit by a different light: another direction and exposure than the scene.
    gx, gy = np.meshgrid(np.linspace(-1, 1, w, dtype=np.float32), np.linspace(-1, 1, h, dtype=np.float32))
    angle = rng.uniform(0, 2 * np.pi)
    shade = 1.0 + rng.uniform(0.25, 0.45) * (gx * np.cos(angle) + gy * np.sin(angle))
    gain = rng.choice([rng.uniform(0.72, 0.85), rng.uniform(1.15, 1.25)])
    face = face * (gain * shade)[..., None]
    # Rendered graphics are crisp: an unsharp mask overshoots every edge of the pasted texture,
    # high-frequency content where a Deepfakes face would be smooth.
    face = face + rng.uniform(1.0, 1.5) * (face - blur(face, 1.0 * _px(target)))
    fake = _composite(target.image, face, hard)
    # The rasterised mesh does not quite cover its own outline: a one-pixel dark gap along the edge.
    inside = hard > 0
    p = np.pad(inside, 1)
    eroded = inside & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    ring = (inside & ~eroded)[..., None]
    fake = np.where(ring, fake * rng.uniform(0.35, 0.55), fake).astype(np.float32)
    return fake, _to_mask(hard, 0.5)


def neural_textures(target: RenderedFrame, source: RenderedFrame, rng: np.random.Generator):
    """Neural rendering of the mouth: a blocky, checkerboarded texture from a learned upsampler.

    Args:
        target: the frame whose mouth is re-rendered.
        source: the target identity with another mouth opening (``faces.with_expression``).
        rng: draws the checkerboard strength and phase.

    Returns:
        ``(fake, mask)`` as for :func:`deepfakes`.
    """
    h, w = target.image.shape[:2]
    alpha = np.clip(blur(target.regions["mouth"], 0.8 * _px(target)) * 1.3, 0.0, 1.0)
    tex = resample(source.image, 2.0, up=Image.Resampling.NEAREST)
    yy, xx = np.mgrid[0:h, 0:w]
    phase = int(rng.integers(2))
    # Transposed convolutions with stride 2 leave a period-2 checkerboard; keep it in luminance
    # (JPEG's chroma subsampling would erase a colour one) and strong enough to survive quality 70.
    checker = np.where((xx + yy + phase) % 2 == 0, 1.0, -1.0).astype(np.float32)
    stripes = np.where((xx // 2 + phase) % 2 == 0, 1.0, -1.0).astype(np.float32)
    pattern = rng.uniform(0.08, 0.12) * checker + rng.uniform(0.02, 0.04) * stripes
    tex = tex + pattern[..., None]
    return _composite(target.image, tex, alpha), _to_mask(alpha)


SourceKind = Literal["identity", "expression"]

#: name -> (function, what its source frame is): "identity" = another person aligned to the target
#: (``swap_identity``), "expression" = the target person with another expression (``with_expression``).
METHODS: dict[str, tuple[ForgeryFn, SourceKind]] = {
    "Deepfakes": (deepfakes, "identity"),
    "Face2Face": (face2face, "expression"),
    "FaceSwap": (faceswap, "identity"),
    "NeuralTextures": (neural_textures, "expression"),
}
