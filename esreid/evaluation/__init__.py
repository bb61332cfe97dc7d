"""Evaluation: exact chunked CMC / mAP / mINP, protocols, k-reciprocal re-ranking, faiss gallery search.

``esreid.evaluation.search`` imports faiss (the optional ``esreid[faiss]`` extra) only when an index is built.
"""

from esreid.evaluation.distance import METRICS, pairwise_distance
from esreid.evaluation.metrics import AP_MODES, RankResult, evaluate_rank
from esreid.evaluation.protocols import PROTOCOLS
from esreid.evaluation.rerank import re_ranking

__all__ = ["AP_MODES", "METRICS", "PROTOCOLS", "RankResult", "evaluate_rank", "pairwise_distance", "re_ranking"]
