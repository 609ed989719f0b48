"""Logits processors and sampling: transformers' ``LogitsProcessor`` maths in NumPy.

Each processor is a pure function on arrays (``repetition_penalty``, ``top_k_filter``, ...) wrapped in
a small class with transformers' name and call signature, ``processor(input_ids, scores) -> scores``,
so the two can be compared side by side. Sources: transformers ``generation/logits_process.py``
(v5.24) for the maths, ``GenerationMixin._get_logits_processor`` (``generation/utils.py``) for the
order in which :func:`build_logits_processors` applies them:

    repetition penalty -> min new tokens -> [sampling only] temperature -> top-k -> top-p -> min-p

Shapes: ``input_ids`` (B, S) ints (prompt + generated so far), ``scores`` (B, V) floats. Filtered
tokens get ``filter_value`` (-inf), as transformers. Inputs are never modified in place.

Sampling draws from an explicit ``numpy.random.Generator`` (:func:`make_rng`), so the same seed gives
the same tokens on every run and machine (NumPy's PCG64 stream is stable); it cannot reproduce
``torch.multinomial``'s stream, only its distribution.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np

from ..errors import GenerationConfigError

NEG_INF = -math.inf


# --- helpers ---------------------------------------------------------------------------------------
def softmax(scores: np.ndarray) -> np.ndarray:
    """Softmax over the last axis in the scores' dtype; -inf entries get probability 0."""
    m = np.max(scores, axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)  # an all -inf row stays nan-free until the division
    e = np.exp(scores - m)
    return e / e.sum(axis=-1, keepdims=True)


def _as_2d(scores) -> np.ndarray:
    s = np.asarray(scores)
    if s.ndim != 2 or not np.issubdtype(s.dtype, np.floating):
        raise GenerationConfigError(f"scores must be a float array of shape (batch, vocab), got {s.shape} {s.dtype}")
    return s


def _check_min_tokens_to_keep(n) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise GenerationConfigError(f"min_tokens_to_keep must be a positive integer, got {n!r}")
    return int(n)


def _is_number(x) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


# --- the maths, as pure functions -------------------------------------------------------------------
def repetition_penalty(input_ids: np.ndarray, scores: np.ndarray, penalty: float,
                       prompt_ignore_length=None) -> np.ndarray:
    """CTRL's repetition penalty (transformers ``RepetitionPenaltyLogitsProcessor``).

    Every token that occurs in ``input_ids`` (prompt included) has its score divided by ``penalty``
    if positive, multiplied by it if negative; each token once, however often it occurs.
    ``prompt_ignore_length``: an int (drop that many leading columns) or one int per row (ignore
    that row's first n positions: generate() passes the left-padding length, as transformers 5.x).
    """
    ids = np.asarray(input_ids, dtype=np.int64)
    if ids.ndim == 1:
        ids = ids[:, None]
    V = scores.shape[-1]
    if isinstance(prompt_ignore_length, (int, np.integer)):
        ids = ids[:, int(prompt_ignore_length):]
    elif prompt_ignore_length is not None:
        ignore = np.asarray(prompt_ignore_length)
        positions = np.arange(ids.shape[1])
        ids = np.where(positions[None, :] < ignore[:, None], V, ids)  # column V is dropped below
    # Ids beyond the scores' vocabulary cannot be generated: they go to a dummy column V (transformers clamps).
    ids = np.minimum(ids, V)
    present = np.zeros((scores.shape[0], V + 1), dtype=bool)
    np.put_along_axis(present, ids, True, axis=1)
    present = present[:, :V]
    p = scores.dtype.type(penalty)
    penalised = np.where(scores < 0, scores * p, scores / p)
    return np.where(present, penalised, scores)


def temperature_scale(scores: np.ndarray, temperature: float) -> np.ndarray:
    """scores / T: T < 1 sharpens the distribution, T > 1 flattens it (``TemperatureLogitsWarper``)."""
    return scores / scores.dtype.type(temperature)


def top_k_filter(scores: np.ndarray, top_k: int, filter_value: float = NEG_INF,
                 min_tokens_to_keep: int = 1) -> np.ndarray:
    """Keep the scores >= the k-th largest (``TopKLogitsWarper``): ties with the k-th are kept, so
    more than k tokens survive only when scores tie at the cut."""
    k = min(max(int(top_k), min_tokens_to_keep), scores.shape[-1])
    kth = -np.partition(-scores, k - 1, axis=-1)[..., k - 1:k]      # (B, 1): the k-th largest
    return np.where(scores < kth, scores.dtype.type(filter_value), scores)


def top_p_filter(scores: np.ndarray, top_p: float, filter_value: float = NEG_INF,
                 min_tokens_to_keep: int = 1) -> np.ndarray:
    """Nucleus filtering with transformers' *ascending* rule (``TopPLogitsWarper``).

    Sort ascending, take the cumulative softmax, remove every token whose cumulative probability is
    <= 1 - top_p, but never the ``min_tokens_to_keep`` largest. Equivalently: a token is kept iff the
    probability mass ranked strictly above it is < top_p, i.e. the smallest top prefix whose mass
    reaches top_p.
    """
    order = np.argsort(scores, axis=-1, kind="stable")              # ascending, (B, V)
    sorted_scores = np.take_along_axis(scores, order, axis=-1)
    cumulative = np.cumsum(softmax(sorted_scores), axis=-1)
    remove_sorted = cumulative <= scores.dtype.type(1 - top_p)
    remove_sorted[..., scores.shape[-1] - min_tokens_to_keep:] = False
    remove = np.empty_like(remove_sorted)
    np.put_along_axis(remove, order, remove_sorted, axis=-1)       # back to vocabulary order
    return np.where(remove, scores.dtype.type(filter_value), scores)


def min_p_filter(scores: np.ndarray, min_p: float, filter_value: float = NEG_INF,
                 min_tokens_to_keep: int = 1) -> np.ndarray:
    """Remove tokens with probability < min_p * p_max (``MinPLogitsWarper``), keeping at least
    ``min_tokens_to_keep`` of the most probable."""
    probs = softmax(scores)
    threshold = scores.dtype.type(min_p) * probs.max(axis=-1, keepdims=True)
    remove = probs < threshold
    k = min(min_tokens_to_keep, probs.shape[-1])
    top = np.argsort(-probs, axis=-1, kind="stable")[..., :k]
    np.put_along_axis(remove, top, False, axis=-1)
    return np.where(remove, scores.dtype.type(filter_value), scores)


def mask_eos(scores: np.ndarray, eos_token_id: Sequence[int]) -> np.ndarray:
    """Set the eos tokens' scores to -inf (``MinNewTokensLengthLogitsProcessor`` before the minimum)."""
    out = scores.copy()
    eos = [e for e in eos_token_id if 0 <= e < scores.shape[-1]]
    out[:, eos] = NEG_INF
    return out


# --- transformers-named processors --------------------------------------------------------------------
class LogitsProcessor:
    """Base class: ``processor(input_ids (B, S), scores (B, V)) -> new scores (B, V)``."""

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class RepetitionPenaltyLogitsProcessor(LogitsProcessor):
    def __init__(self, penalty: float, prompt_ignore_length=None):
        if not _is_number(penalty) or not penalty > 0:
            raise GenerationConfigError(f"repetition_penalty must be a strictly positive float (1.0 = no penalty), "
                                        f"got {penalty!r}")
        if isinstance(prompt_ignore_length, (int, np.integer)) and prompt_ignore_length < 0:
            raise GenerationConfigError(f"prompt_ignore_length must be >= 0, got {prompt_ignore_length}")
        self.penalty = float(penalty)
        self.prompt_ignore_length = prompt_ignore_length

    def __call__(self, input_ids, scores):
        scores = _as_2d(scores)
        if self.prompt_ignore_length is not None and not isinstance(self.prompt_ignore_length, (int, np.integer)):
            if len(self.prompt_ignore_length) != scores.shape[0]:
                raise GenerationConfigError("prompt_ignore_length has one entry per batch row; the batch differs")
        return repetition_penalty(input_ids, scores, self.penalty, self.prompt_ignore_length)


class TemperatureLogitsWarper(LogitsProcessor):
    def __init__(self, temperature: float):
        if not _is_number(temperature) or not temperature > 0:
            hint = " For greedy decoding set do_sample=False." if _is_number(temperature) and temperature == 0 else ""
            raise GenerationConfigError(f"temperature must be a strictly positive float, got {temperature!r}.{hint}")
        self.temperature = float(temperature)

    def __call__(self, input_ids, scores):
        return temperature_scale(_as_2d(scores), self.temperature)


class TopKLogitsWarper(LogitsProcessor):
    def __init__(self, top_k: int, filter_value: float = NEG_INF, min_tokens_to_keep: int = 1):
        if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k <= 0:
            raise GenerationConfigError(f"top_k must be a strictly positive integer (0 disables it in generate()), "
                                        f"got {top_k!r}")
        self.min_tokens_to_keep = _check_min_tokens_to_keep(min_tokens_to_keep)
        self.top_k = max(int(top_k), self.min_tokens_to_keep)
        self.filter_value = filter_value

    def __call__(self, input_ids, scores):
        return top_k_filter(_as_2d(scores), self.top_k, self.filter_value, self.min_tokens_to_keep)


class TopPLogitsWarper(LogitsProcessor):
    def __init__(self, top_p: float, filter_value: float = NEG_INF, min_tokens_to_keep: int = 1):
        if not _is_number(top_p) or not 0 < top_p <= 1:
            raise GenerationConfigError(f"top_p must be in (0, 1] (1.0 disables nucleus filtering), got {top_p!r}")
        self.top_p = float(top_p)
        self.filter_value = filter_value
        self.min_tokens_to_keep = _check_min_tokens_to_keep(min_tokens_to_keep)

    def __call__(self, input_ids, scores):
        return top_p_filter(_as_2d(scores), self.top_p, self.filter_value, self.min_tokens_to_keep)


class MinPLogitsWarper(LogitsProcessor):
    def __init__(self, min_p: float, filter_value: float = NEG_INF, min_tokens_to_keep: int = 1):
        if not _is_number(min_p) or not 0 <= min_p <= 1:
            raise GenerationConfigError(f"min_p must be in [0, 1] (a fraction of the top token's probability), "
                                        f"got {min_p!r}")
        self.min_p = float(min_p)
        self.filter_value = filter_value
        self.min_tokens_to_keep = _check_min_tokens_to_keep(min_tokens_to_keep)

    def __call__(self, input_ids, scores):
        return min_p_filter(_as_2d(scores), self.min_p, self.filter_value, self.min_tokens_to_keep)


class MinNewTokensLengthLogitsProcessor(LogitsProcessor):
    """Forbid eos until ``min_new_tokens`` tokens follow the prompt (``input_ids`` includes the prompt
    of length ``prompt_length_to_skip``)."""

    def __init__(self, prompt_length_to_skip: int, min_new_tokens: int, eos_token_id: int | Iterable[int]):
        for name, value in (("prompt_length_to_skip", prompt_length_to_skip), ("min_new_tokens", min_new_tokens)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise GenerationConfigError(f"{name} must be a non-negative integer, got {value!r}")
        self.prompt_length_to_skip = int(prompt_length_to_skip)
        self.min_new_tokens = int(min_new_tokens)
        self.eos_token_id = normalize_token_ids(eos_token_id, "eos_token_id")

    def __call__(self, input_ids, scores):
        scores = _as_2d(scores)
        new_tokens = np.asarray(input_ids).shape[-1] - self.prompt_length_to_skip
        return mask_eos(scores, self.eos_token_id) if new_tokens < self.min_new_tokens else scores.copy()


class LogitsProcessorList(list):
    """Apply processors in order (transformers ``LogitsProcessorList``)."""

    def __call__(self, input_ids, scores):
        for processor in self:
            scores = processor(input_ids, scores)
        return scores


def normalize_token_ids(ids, name: str) -> list[int]:
    """An id or a list of ids -> list[int]; None -> []."""
    if ids is None:
        return []
    def is_id(i):
        return isinstance(i, (int, np.integer)) and not isinstance(i, bool) and i >= 0

    if isinstance(ids, np.ndarray):
        ids = ids.reshape(-1).tolist()
    if is_id(ids):
        return [int(ids)]
    items = list(ids) if isinstance(ids, (list, tuple, np.ndarray)) else None
    if items is None or not all(is_id(i) for i in items):
        raise GenerationConfigError(f"{name} must be a non-negative token id or a list of them, got {ids!r}")
    return [int(i) for i in items]


def build_logits_processors(*, do_sample: bool, temperature: float = 1.0, top_k: int | None = None,
                            top_p: float | None = 1.0, min_p: float | None = None,
                            repetition_penalty: float | None = 1.0, min_new_tokens: int = 0,
                            eos_token_id: Sequence[int] = (), prompt_length: int = 0,
                            prompt_ignore_length=None) -> LogitsProcessorList:
    """The processors transformers' ``_get_logits_processor`` builds for these settings, in its order.

    Warpers (temperature, top-k, top-p, min-p) only apply when sampling; a value that changes nothing
    (temperature 1, top_k 0/None, top_p 1, repetition_penalty 1) adds no processor, as transformers.
    """
    procs = LogitsProcessorList()
    if repetition_penalty is not None and repetition_penalty != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(repetition_penalty, prompt_ignore_length))
    if min_new_tokens and eos_token_id:
        procs.append(MinNewTokensLengthLogitsProcessor(prompt_length, min_new_tokens, eos_token_id))
    if do_sample:
        if temperature is not None and temperature != 1.0:
            procs.append(TemperatureLogitsWarper(temperature))
        if top_k:
            procs.append(TopKLogitsWarper(top_k))
        if top_p is not None and top_p < 1.0:
            procs.append(TopPLogitsWarper(top_p))
        if min_p is not None:
            procs.append(MinPLogitsWarper(min_p))
    return procs


# --- drawing tokens -------------------------------------------------------------------------------
def make_rng(seed: int | None = None, rng: np.random.Generator | None = None) -> np.random.Generator:
    """The generator sampling draws from: ``rng`` as given, else ``default_rng(seed)``.

    With neither, a fresh OS-seeded generator (not reproducible, like an unseeded torch)."""
    if seed is not None and rng is not None:
        raise GenerationConfigError("pass either seed= or rng=, not both")
    if rng is not None:
        if not isinstance(rng, np.random.Generator):
            raise GenerationConfigError(f"rng must be a numpy.random.Generator (np.random.default_rng(seed)), "
                                        f"got {type(rng).__name__}")
        return rng
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
        raise GenerationConfigError(f"seed must be a non-negative integer, got {seed!r}")
    return np.random.default_rng(seed)


def sample_from_scores(scores: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One token per row from softmax(scores), by inverting the cumulative distribution.

    Probabilities are taken in float64; the draw u ~ U[0, total) picks the first token whose
    cumulative probability exceeds u, so a token of probability 0 (filtered, -inf) is never chosen.
    """
    scores = _as_2d(scores)
    if np.isnan(scores).any() or not (scores > NEG_INF).any(axis=-1).all():
        raise GenerationConfigError("every token was filtered out or scores contain nan: nothing to sample from")
    probs = softmax(scores.astype(np.float64))                      # (B, V)
    cdf = np.cumsum(probs, axis=-1)                                 # (B, V)
    u = rng.random(scores.shape[0]) * cdf[:, -1]                    # (B,)
    picked = np.array([np.searchsorted(c, x, side="right") for c, x in zip(cdf, u)], dtype=np.int64)
    # Rounding can put u at the very top: fall back to the last token with non-zero probability.
    last_nonzero = probs.shape[-1] - 1 - np.argmax(probs[:, ::-1] > 0, axis=-1)
    return np.minimum(picked, last_nonzero)


def greedy_from_scores(scores: np.ndarray) -> np.ndarray:
    """argmax per row; the first index wins ties (as torch.argmax)."""
    return np.argmax(_as_2d(scores), axis=-1).astype(np.int64)
