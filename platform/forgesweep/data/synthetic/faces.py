"""Procedurally rendered face-like images: identities, poses, rendering and the camera.

An *identity* is a bundle of appearance parameters (skin tone, face shape, eyes, brows, hair,
clothes, background, lighting) drawn from a seeded RNG; a *pose* is the per-frame jitter (shift,
scale, roll, mouth opening, blink, gaze, brow raise). :func:`render_face` draws a face analytically
with numpy: every part is a soft-edged shape anti-aliased over about one pixel, so a real frame has
no hard edges, no blur seams and no periodic texture -- exactly the cues the forgery methods add.

:func:`capture` is the camera that every frame (real and fake alike) goes through last: sensor noise
and JPEG at a random quality, so compression is never a label cue.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

# Skin tones from light to dark (sRGB / 255); an identity interpolates between neighbours.
_SKIN = np.array(
    [[255, 224, 196], [241, 194, 150], [224, 172, 125], [198, 134, 90], [141, 85, 56], [94, 60, 42]],
    dtype=np.float32,
) / 255.0
_HAIR = np.array(
    [[20, 16, 14], [60, 40, 28], [110, 74, 40], [200, 160, 95], [150, 60, 30], [160, 160, 160]],
    dtype=np.float32,
) / 255.0
# Face units per half image: > 1 enlarges the face so that it fills most of the frame.
_ZOOM = 1.3
_IRIS = np.array([[70, 45, 25], [40, 90, 150], [60, 110, 60], [120, 95, 50], [30, 25, 20]], dtype=np.float32) / 255.0


@dataclass(frozen=True)
class Identity:
    """Appearance of one synthetic person; all lengths in half-image units (image spans [-1, 1])."""

    skin: tuple[float, float, float]
    face_center: tuple[float, float]
    face_radii: tuple[float, float]
    face_power: float  # superellipse exponent: 2 is an ellipse, larger is squarer
    jaw: float  # how much the lower face narrows towards the chin
    eye_dx: float
    eye_y: float
    eye_radii: tuple[float, float]
    iris: tuple[float, float, float]
    brow_gap: float
    brow_thickness: float
    brow_tilt: float
    nose_y: float
    nose_length: float
    mouth_y: float
    mouth_width: float
    lip_height: float
    lip: tuple[float, float, float]
    hair: tuple[float, float, float]
    hair_style: int  # 0 bald, 1 short cap, 2 long hair
    hairline: float
    beard: bool
    clothes: tuple[float, float, float]
    background: tuple[tuple[float, float, float], tuple[float, float, float]]
    background_style: int  # 0 linear gradient, 1 slow stripes, 2 soft blobs
    background_angle: float
    light_angle: float
    light_strength: float


@dataclass(frozen=True)
class Pose:
    """Per-frame jitter of an identity: a small head movement plus an expression."""

    shift: tuple[float, float] = (0.0, 0.0)
    scale: float = 1.0
    roll: float = 0.0  # radians
    mouth_open: float = 0.0  # 0 closed .. 1 wide open
    blink: float = 0.0  # 0 open .. 1 closed
    gaze: tuple[float, float] = (0.0, 0.0)
    brow_raise: float = 0.0


@dataclass
class RenderedFrame:
    """A rendered clean frame (float32 HxWx3 in [0, 1]) with the soft region masks forgeries use.

    ``regions`` holds float32 HxW maps in [0, 1]: ``face`` (the skin ellipse), ``hull`` (the face
    below the brows), ``inner`` (an ellipse around brows, eyes, nose and mouth), ``eyes`` and
    ``mouth`` (boxes around each feature).
    """

    image: np.ndarray
    regions: dict[str, np.ndarray]
    identity: Identity
    pose: Pose


def _mix(palette: np.ndarray, t: float) -> np.ndarray:
    """Colour at position ``t`` in [0, 1] along a palette, linearly interpolated."""
    pos = t * (len(palette) - 1)
    i = min(int(pos), len(palette) - 2)
    return palette[i] * (1 - (pos - i)) + palette[i + 1] * (pos - i)


def _colour(c: np.ndarray) -> tuple[float, float, float]:
    return tuple(float(v) for v in np.clip(c, 0.0, 1.0))  # type: ignore[return-value]


def sample_identity(rng: np.random.Generator) -> Identity:
    """Draw a random identity.

    Args:
        rng: the only source of randomness, so one seed always gives the same person.

    Returns:
        The new :class:`Identity`.
    """
    skin = _mix(_SKIN, rng.uniform()) * rng.uniform(0.95, 1.05, 3)
    ry = rng.uniform(0.50, 0.62)
    hair = _mix(_HAIR, rng.uniform()) * rng.uniform(0.85, 1.15)
    bg_a = rng.uniform(0.1, 0.9, 3)
    bg_b = np.clip(bg_a + rng.uniform(-0.35, 0.35, 3), 0.05, 0.95)
    eye_y = rng.uniform(-0.14, -0.06)
    return Identity(
        skin=_colour(skin),
        face_center=(rng.uniform(-0.06, 0.06), rng.uniform(-0.02, 0.08)),
        face_radii=(ry * rng.uniform(0.72, 0.86), ry),
        face_power=rng.uniform(2.0, 2.6),
        jaw=rng.uniform(0.0, 0.25),
        eye_dx=rng.uniform(0.15, 0.21),
        eye_y=eye_y,
        eye_radii=(rng.uniform(0.065, 0.09), rng.uniform(0.035, 0.05)),
        iris=_colour(_IRIS[rng.integers(len(_IRIS))] * rng.uniform(0.8, 1.2)),
        brow_gap=rng.uniform(0.07, 0.11),
        brow_thickness=rng.uniform(0.015, 0.03),
        brow_tilt=rng.uniform(-0.25, 0.2),
        nose_y=eye_y + rng.uniform(0.14, 0.2),
        nose_length=rng.uniform(0.07, 0.11),
        mouth_y=rng.uniform(0.26, 0.34),
        mouth_width=rng.uniform(0.13, 0.2),
        lip_height=rng.uniform(0.025, 0.04),
        lip=_colour(skin * np.array([0.95, 0.6, 0.6]) + np.array([0.05, 0.0, 0.02])),
        hair=_colour(hair),
        hair_style=int(rng.choice(3, p=[0.15, 0.5, 0.35])),
        hairline=rng.uniform(0.45, 0.62),
        beard=bool(rng.uniform() < 0.15),
        clothes=_colour(rng.uniform(0.05, 0.95, 3)),
        background=(_colour(bg_a), _colour(bg_b)),
        background_style=int(rng.integers(3)),
        background_angle=rng.uniform(0, 2 * np.pi),
        light_angle=rng.uniform(0, 2 * np.pi),
        light_strength=rng.uniform(0.05, 0.3),
    )


def sample_poses(rng: np.random.Generator, n: int) -> list[Pose]:
    """Draw ``n`` poses of one video: a slow random walk in head position and expression.

    Consecutive frames look alike (as in a real clip) yet mouth and eyes change enough for a
    re-enactment to find a frame with a different expression.
    """
    poses = []
    shift = rng.uniform(-0.03, 0.03, 2)
    mouth = rng.uniform(0, 1)
    for _ in range(n):
        shift = np.clip(shift + rng.normal(0, 0.015, 2), -0.06, 0.06)
        mouth = float(np.clip(mouth + rng.normal(0, 0.35), 0, 1))
        poses.append(
            Pose(
                shift=(float(shift[0]), float(shift[1])),
                scale=float(rng.uniform(0.96, 1.04)),
                roll=float(rng.normal(0, 0.05)),
                mouth_open=mouth,
                blink=float(rng.uniform(0.6, 1.0)) if rng.uniform() < 0.12 else 0.0,
                gaze=(float(rng.normal(0, 0.015)), float(rng.normal(0, 0.008))),
                brow_raise=float(rng.normal(0, 0.012)),
            )
        )
    return poses


def with_expression(pose: Pose, driver: Pose) -> Pose:
    """``pose`` with the expression (mouth, eyes, brows) of ``driver``: what a re-enactment does."""
    return replace(pose, mouth_open=driver.mouth_open, blink=driver.blink, gaze=driver.gaze,
                   brow_raise=driver.brow_raise)


# The parts of an identity a face swap carries over: everything inside the landmark hull.
_INNER_FACE = ("skin", "eye_dx", "eye_y", "eye_radii", "iris", "brow_gap", "brow_thickness", "brow_tilt",
               "nose_y", "nose_length", "mouth_y", "mouth_width", "lip_height", "lip", "beard")


def swap_identity(target: Identity, source: Identity) -> Identity:
    """``target``'s head, hair and scene with ``source``'s inner face: what a swap model outputs.

    Keeping the target's geometry means the swapped face lines up with the frame it is pasted into,
    so only the swap's own artifacts (boundary, colour, blur) tell it apart.
    """
    return replace(target, **{name: getattr(source, name) for name in _INNER_FACE})


def _soft(dist_px: np.ndarray) -> np.ndarray:
    """Coverage of a shape from a signed pixel distance to its edge (negative = inside)."""
    return np.clip(0.5 - dist_px, 0.0, 1.0).astype(np.float32)


def _ellipse(x, y, cx, cy, rx, ry, ppu, power=2.0, soft_px=1.0):
    """Anti-aliased (super)ellipse coverage; ``ppu`` is pixels per unit, ``soft_px`` the edge width."""
    d = (np.abs((x - cx) / rx) ** power + np.abs((y - cy) / ry) ** power) ** (1.0 / power)
    return _soft((d - 1.0) * min(rx, ry) * ppu / soft_px)


def _box(x, y, x0, x1, y0, y1, ppu):
    """Anti-aliased axis-aligned box coverage in face coordinates."""
    d = np.maximum(np.maximum(x0 - x, x - x1), np.maximum(y0 - y, y - y1))
    return _soft(d * ppu)


def _paint(img: np.ndarray, alpha: np.ndarray, colour) -> None:
    img *= 1.0 - alpha[..., None]
    img += alpha[..., None] * np.asarray(colour, dtype=np.float32)


def _background(ident: Identity, gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
    a, b = np.asarray(ident.background[0]), np.asarray(ident.background[1])
    c, s = np.cos(ident.background_angle), np.sin(ident.background_angle)
    t = gx * c + gy * s
    if ident.background_style == 0:
        w = (t + 1.5) / 3.0
    elif ident.background_style == 1:
        # Period of about an image width: slow enough never to look like a forgery's fine texture.
        w = 0.5 + 0.5 * np.sin(2.4 * t + ident.background_angle)
    else:
        w = 0.5 + 0.5 * np.sin(1.7 * gx + 2.0 * c) * np.cos(1.3 * gy + 2.0 * s)
    w = w[..., None].astype(np.float32)
    return (a * (1 - w) + b * w).astype(np.float32)


def render_face(ident: Identity, pose: Pose, size: int) -> RenderedFrame:
    """Render one clean frame of ``ident`` in ``pose``.

    Args:
        ident: who is drawn.
        pose: head movement and expression of this frame.
        size: output height and width in pixels.

    Returns:
        A :class:`RenderedFrame` whose image is float32 HxWx3 in [0, 1].
    """
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0
    gx, gy = np.meshgrid(coords, coords)
    img = _background(ident, gx, gy)
    # Face coordinates: undo the head's shift, scale and roll around the face centre; the zoom
    # makes the face fill most of the frame, like the face crops detectors are trained on.
    fcx, fcy = ident.face_center
    zoom = pose.scale * _ZOOM
    px, py = (gx - fcx - pose.shift[0]) / zoom, (gy - fcy - pose.shift[1]) / zoom
    cr, sr = np.cos(-pose.roll), np.sin(-pose.roll)
    x, y = px * cr - py * sr, px * sr + py * cr
    ppu = size / 2.0 * zoom
    rx, ry = ident.face_radii
    skin = np.asarray(ident.skin, dtype=np.float32)
    hair = np.asarray(ident.hair, dtype=np.float32)

    _paint(img, _ellipse(x, y, 0.0, ry + 0.62, 1.05, 0.5, ppu), ident.clothes)
    _paint(img, _box(x, y, -0.45 * rx, 0.45 * rx, 0.3 * ry, ry + 0.3, ppu), skin * 0.82)
    if ident.hair_style == 2:
        back = _ellipse(x, y, 0.0, 0.05, rx * 1.3, ry * 1.15, ppu) * _soft((y - 0.6 * ry) * ppu)
        _paint(img, back, hair * 0.85)
    for side in (-1.0, 1.0):
        _paint(img, _ellipse(x, y, side * rx * 0.98, -0.03, 0.06, 0.11, ppu), skin * 0.9)
    # The chin narrows: widen the x coordinate below the face centre.
    xw = x * (1.0 + ident.jaw * np.clip(y / ry, 0.0, 1.0))
    face = _ellipse(xw, y, 0.0, 0.0, rx, ry, ppu, power=ident.face_power)
    _paint(img, face, skin)
    # Soft shading towards the face border, so the face is not a flat sticker.
    d = np.clip((np.abs(xw / rx) ** 2 + np.abs(y / ry) ** 2), 0, 1)
    img *= (1.0 - 0.18 * face * d**2)[..., None]
    if ident.beard:
        beard = face * _soft((ident.mouth_y - 0.06 - y) * ppu / 2.0) * 0.75
        _paint(img, beard, hair)
    if ident.hair_style > 0:
        line = -ry * ident.hairline + 0.03 * np.sin(x * 9.0 + ident.light_angle)
        cap = _ellipse(x, y, 0.0, -ry * 0.3, rx * 1.1, ry * 0.82, ppu) * _soft((y - line) * ppu)
        _paint(img, cap, hair)

    # Brows, eyes, nose, mouth.
    brow_y = ident.eye_y - ident.brow_gap - pose.brow_raise
    ex0, ey0 = ident.eye_radii
    ey = ey0 * (1.0 - 0.9 * pose.blink)
    for side in (-1.0, 1.0):
        cx = side * ident.eye_dx
        t = side * ident.brow_tilt
        bx, by = (x - cx) * np.cos(t) + (y - brow_y) * np.sin(t), -(x - cx) * np.sin(t) + (y - brow_y) * np.cos(t)
        _paint(img, _ellipse(bx, by, 0.0, 0.0, ex0 * 1.25, ident.brow_thickness, ppu), hair * 0.9)
        sclera = _ellipse(x, y, cx, ident.eye_y, ex0, ey, ppu)
        _paint(img, sclera, (0.93, 0.92, 0.88))
        gx0, gy0 = cx + pose.gaze[0], ident.eye_y + pose.gaze[1]
        _paint(img, sclera * _ellipse(x, y, gx0, gy0, ey0 * 0.85, ey0 * 0.85, ppu), ident.iris)
        _paint(img, sclera * _ellipse(x, y, gx0, gy0, ey0 * 0.38, ey0 * 0.38, ppu), (0.03, 0.03, 0.03))
        _paint(img, _ellipse(x, y, cx, ident.eye_y - ey, ex0 * 1.05, 0.012, ppu) * 0.6, skin * 0.55)
    nose = _ellipse(x, y, 0.0, ident.nose_y, 0.035, ident.nose_length, ppu, soft_px=3.0)
    img *= (1.0 - 0.12 * nose)[..., None]
    for side in (-1.0, 1.0):
        nostril = _ellipse(x, y, side * 0.03, ident.nose_y + ident.nose_length * 0.85, 0.018, 0.011, ppu)
        _paint(img, nostril * 0.8, skin * 0.45)
    open_h = 0.055 * pose.mouth_open
    my, mw = ident.mouth_y, ident.mouth_width
    _paint(img, _ellipse(x, y, 0.0, my, mw, ident.lip_height + open_h * 0.6, ppu), ident.lip)
    if open_h > 0.004:
        inner = _ellipse(x, y, 0.0, my, mw * 0.78, open_h, ppu)
        _paint(img, inner, (0.22, 0.06, 0.07))
        _paint(img, inner * _soft((y - (my - open_h * 0.35)) * ppu), (0.9, 0.88, 0.82))
    else:
        _paint(img, _ellipse(x, y, 0.0, my, mw * 0.85, 0.006, ppu) * 0.8, np.asarray(ident.lip) * 0.45)

    # Scene lighting: one directional gradient over everything, as a lamp beside the camera would.
    lc, ls = np.cos(ident.light_angle), np.sin(ident.light_angle)
    img *= (1.0 + ident.light_strength * (gx * lc + gy * ls))[..., None]

    regions = {
        "face": face,
        # Brows to chin: the landmark hull a face-swap pipeline blends.
        "hull": face * _soft((brow_y - 0.08 - y) * ppu),
        "inner": face * _ellipse(x, y, 0.0, (brow_y + my) / 2.0 + 0.02, ident.eye_dx + ex0 + 0.06,
                                 (my - brow_y) / 2.0 + 0.1, ppu),
        "eyes": np.maximum(
            *[_box(x, y, s * ident.eye_dx - ex0 * 1.4, s * ident.eye_dx + ex0 * 1.4,
                   brow_y - 0.05, ident.eye_y + ey0 + 0.04, ppu) for s in (-1.0, 1.0)]
        ),
        "mouth": _box(x, y, -mw - 0.06, mw + 0.06, my - ident.lip_height - 0.06, my + 0.11, ppu),
    }
    return RenderedFrame(np.clip(img, 0.0, 1.0).astype(np.float32), regions, ident, pose)


def capture(image: np.ndarray, rng: np.random.Generator, quality: tuple[int, int],
            noise: tuple[float, float] = (0.004, 0.015)) -> np.ndarray:
    """The camera every frame goes through: Gaussian sensor noise, then JPEG at a random quality.

    Args:
        image: float HxWx3 in [0, 1].
        rng: draws the noise level, the noise and the JPEG quality.
        quality: inclusive JPEG quality range (FF++ "c23" is roughly 70-95).
        noise: range of the noise standard deviation.

    Returns:
        The decoded JPEG as uint8 HxWx3.
    """
    sigma = rng.uniform(*noise)
    noisy = image + rng.normal(0.0, sigma, image.shape).astype(np.float32)
    pixels = np.clip(np.round(noisy * 255.0), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=int(rng.integers(quality[0], quality[1] + 1)))
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
