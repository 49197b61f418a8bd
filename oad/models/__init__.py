"""Models: OadTR (ICCV 2021), the TRN baseline (ICCV 2019) and a single-chunk linear floor."""

from oad.models.linear import ChunkLinear
from oad.models.oadtr import OadTR
from oad.models.trn import TRN

__all__ = ["ChunkLinear", "OadTR", "TRN"]
