"""The built-in synthetic face-forgery benchmark: procedural faces and four FF++-like forgery methods.

``generate_synthetic(out_dir, SyntheticSpec())`` writes frames, masks, MP4 clips and a manifest;
see :mod:`forgesweep.data.synthetic.generate`.
"""

from forgesweep.data.synthetic.forgeries import METHODS
from forgesweep.data.synthetic.generate import KNOWN_METHODS, SyntheticSpec, generate_synthetic

__all__ = ["KNOWN_METHODS", "METHODS", "SyntheticSpec", "generate_synthetic"]
