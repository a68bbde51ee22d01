"""Update compression: codecs, one module each, chained by a pipeline with error feedback.

pipe = Pipeline(cfg.compress, shapes)
payload, residual = pipe.pack(delta, residual, shared_seed=s, private_seed=p)
delta_hat = pipe.unpack(payload, shared_seed=s)
"""

from zenfed.compress.base import Codec, CodecError
from zenfed.compress.lowrank import LowRank
from zenfed.compress.pipeline import CODECS, Pipeline
from zenfed.compress.quantize import Quantize
from zenfed.compress.randk import RandK
from zenfed.compress.sign import Sign
from zenfed.compress.sketch import Sketch
from zenfed.compress.topk import TopK

__all__ = [
    "CODECS",
    "Codec",
    "CodecError",
    "LowRank",
    "Pipeline",
    "Quantize",
    "RandK",
    "Sign",
    "Sketch",
    "TopK",
]
