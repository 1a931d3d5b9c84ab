"""Deep-Align's learned aligner: the weight-space equivariant encoder and ``DeepAlign``."""
from deepalign.nn._deepalign import DeepAlign
from deepalign.nn._encoder import PRESETS, EncoderConfig, WeightSpaceEncoder, make_config
from deepalign.nn._equivariant import WeightSpaceLayer
from deepalign.nn._layout import WeightLayout

__all__ = ["DeepAlign", "EncoderConfig", "PRESETS", "WeightLayout", "WeightSpaceEncoder",
           "WeightSpaceLayer", "make_config"]
