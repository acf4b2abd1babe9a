"""What a preprocessing run does to each video: frames sampled, face crop, output format.

The fields that change the frames written (:meth:`PreprocessSpec.output_key`) are recorded in
``<out>/preprocess.json``; resuming into a folder preprocessed with different values is refused,
so one output folder never mixes two recipes.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from forgesweep.data.face_crop import Fallback


class PreprocessSpec(BaseModel):
    """Options of the preprocessing job (``forgesweep preprocess`` flags map one to one)."""

    model_config = ConfigDict(extra="forbid")

    num_frames: int = Field(32, ge=1, le=10000,
                            description="frames per video, evenly spaced (first and last included); "
                                        "a shorter video gives all its frames")
    image_size: int = Field(256, ge=16, le=2048, description="side of the square face crops written")
    detector: str = Field("haar", description="face detector: 'haar' (OpenCV cascade, extra 'faces') or "
                                             "'none' (faces already cropped: frames are only resized)")
    scale: float = Field(1.3, gt=0, le=4, description="face box enlargement around its centre")
    fallback: Fallback = Field("nearest", description="frame without a face: nearest|center|full|skip")
    image_format: Literal["png", "jpeg"] = Field("png", description="frame files: lossless PNG or JPEG")
    jpeg_quality: int = Field(95, ge=1, le=100, description="JPEG quality (image_format jpeg)")
    skip_bad: bool = Field(False, description="skip bad videos (listed and counted) instead of stopping")
    max_in_flight: Optional[int] = Field(
        None, ge=1, le=100000, description="Ray tasks running at once (default: the cluster's CPUs / cpus_per_task)")
    cpus_per_task: float = Field(1.0, gt=0, le=64, description="CPUs each video's Ray task reserves")
    progress_every_s: float = Field(5.0, ge=0, description="seconds between progress lines (0: after every video)")

    def output_key(self) -> dict[str, Any]:
        """The fields that decide the written frames (compared when a run resumes)."""
        keys = ("num_frames", "image_size", "detector", "scale", "fallback", "image_format")
        out = {k: getattr(self, k) for k in keys}
        if self.image_format == "jpeg":
            out["jpeg_quality"] = self.jpeg_quality
        return out

    @property
    def suffix(self) -> str:
        """File suffix of the written frames."""
        return ".png" if self.image_format == "png" else ".jpg"
