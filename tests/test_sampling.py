"""Logits processors and sampling (pycohere.sampling), no torch needed.

Expected values are derived by hand in the comments, from the rules of transformers'
``generation/logits_process.py``; the live test (test_generation_live.py) compares the same
processors with transformers' own on random logits.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from pycohere.errors import GenerationConfigError
from pycohere.generation.sampling import (LogitsProcessorList, MinNewTokensLengthLogitsProcessor, MinPLogitsWarper,
                               RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper, TopKLogitsWarper,
                               TopPLogitsWarper, build_logits_processors, greedy_from_scores, make_rng,
                               sample_from_scores, softmax)

INF = math.inf
# softmax(log p) = p: logits whose distribution is exactly [0.1, 0.2, 0.3, 0.4] (up to rounding).
P4 = np.array([0.1, 0.2, 0.3, 0.4])
LOGP4 = np.log(P4)[None]
IDS = np.zeros((1, 1), dtype=np.int64)  # input_ids, unused by the warpers


def kept(scores) -> list[int]:
    return np.flatnonzero(np.isfinite(scores[0])).tolist()


# --- temperature -------------------------------------------------------------------------------------
def test_temperature_hand_derived():
    # scores / 0.5 = 2 log p = log p^2: the distribution becomes p^2 / sum p^2 = [1, 4, 9, 16] / 30.
    out = TemperatureLogitsWarper(0.5)(IDS, LOGP4)
    np.testing.assert_allclose(softmax(out)[0], np.array([1, 4, 9, 16]) / 30, rtol=1e-12)
    # T = 2: p^(1/2) / sum = sqrt([1, 2, 3, 4]) / (1 + 1.41421 + 1.73205 + 2)
    out = TemperatureLogitsWarper(2.0)(IDS, LOGP4)
    r = np.sqrt([1, 2, 3, 4])
    np.testing.assert_allclose(softmax(out)[0], r / r.sum(), rtol=1e-12)


# --- top-k ---------------------------------------------------------------------------------------------
def test_top_k_hand_derived_with_ties():
    s = np.array([[1.0, 3.0, 2.0, 3.0, 0.5]])
    # k = 3: the 3rd largest is 2.0; scores < 2.0 (ids 0 and 4) are removed.
    assert kept(TopKLogitsWarper(3)(IDS, s)) == [1, 2, 3]
    # k = 2: the 2nd largest is 3.0 (tied); only the two 3.0 survive.
    np.testing.assert_array_equal(TopKLogitsWarper(2)(IDS, s), [[-INF, 3.0, -INF, 3.0, -INF]])
    # k = 1: the largest is 3.0, and its tie survives too (transformers removes only scores < k-th).
    assert kept(TopKLogitsWarper(1)(IDS, s)) == [1, 3]
    # k larger than the vocabulary keeps everything; min_tokens_to_keep raises k.
    assert kept(TopKLogitsWarper(10)(IDS, s)) == [0, 1, 2, 3, 4]
    assert kept(TopKLogitsWarper(1, min_tokens_to_keep=3)(IDS, s)) == [1, 2, 3]


# --- top-p ---------------------------------------------------------------------------------------------
def test_top_p_hand_derived():
    # Ascending probs [0.1, 0.2, 0.3, 0.4], cumulative [0.1, 0.3, 0.6, 1.0].
    # top_p 0.45: remove cumulative <= 0.55 -> 0.1, 0.2 go; kept {0.3, 0.4} = [3/7, 4/7] renormalised.
    out = TopPLogitsWarper(0.45)(IDS, LOGP4)
    assert kept(out) == [2, 3]
    np.testing.assert_allclose(softmax(out)[0], [0, 0, 3 / 7, 4 / 7], atol=1e-12)
    # top_p 0.35: remove cumulative <= 0.65 -> 0.1, 0.2, 0.3 go; only 0.4 remains.
    assert kept(TopPLogitsWarper(0.35)(IDS, LOGP4)) == [3]
    # ... unless min_tokens_to_keep = 2: the two largest are always kept.
    assert kept(TopPLogitsWarper(0.35, min_tokens_to_keep=2)(IDS, LOGP4)) == [2, 3]
    # top_p 0.95: remove cumulative <= 0.05 -> nothing goes; top_p 1 keeps everything too.
    assert kept(TopPLogitsWarper(0.95)(IDS, LOGP4)) == [0, 1, 2, 3]
    assert kept(TopPLogitsWarper(1.0)(IDS, LOGP4)) == [0, 1, 2, 3]


def test_top_p_is_applied_per_row_in_vocabulary_order():
    # Same distribution, permuted: the kept set follows the tokens, not the positions.
    s = np.log(np.array([[0.4, 0.1, 0.3, 0.2], [0.1, 0.2, 0.3, 0.4]]))
    out = TopPLogitsWarper(0.45)(IDS, s)
    assert np.isfinite(out).tolist() == [[True, False, True, False], [False, False, True, True]]


# --- min-p ---------------------------------------------------------------------------------------------
def test_min_p_hand_derived():
    # p_max = 0.4. min_p 0.6 -> threshold 0.24: 0.1 and 0.2 are below, 0.3 and 0.4 stay.
    assert kept(MinPLogitsWarper(0.6)(IDS, LOGP4)) == [2, 3]
    # min_p 0.9 -> threshold 0.36: only 0.4 stays; min_tokens_to_keep 2 brings back 0.3.
    assert kept(MinPLogitsWarper(0.9)(IDS, LOGP4)) == [3]
    assert kept(MinPLogitsWarper(0.9, min_tokens_to_keep=2)(IDS, LOGP4)) == [2, 3]
    # min_p 0 keeps all; kept scores are unchanged (not renormalised).
    out = MinPLogitsWarper(0.0)(IDS, LOGP4)
    np.testing.assert_array_equal(out, LOGP4)


# --- repetition penalty ------------------------------------------------------------------------------
def test_repetition_penalty_hand_derived():
    s = np.array([[2.0, -1.0, 0.5, -3.0, 1.0, 0.0]])
    # ids 1 (twice) and 2 and 5 occurred: 1 is negative -> -1 * 2 = -2; 2 positive -> 0.5 / 2 = 0.25;
    # 5 is 0 -> 0 / 2 = 0. A token repeated is penalised once. Others unchanged.
    out = RepetitionPenaltyLogitsProcessor(2.0)(np.array([[1, 2, 1, 5]]), s)
    np.testing.assert_array_equal(out, [[2.0, -2.0, 0.25, -3.0, 1.0, 0.0]])
    # penalty < 1 rewards repetition: 0.5 -> 0.5 / 0.5 = 1.0; -1 -> -1 * 0.5 = -0.5.
    out = RepetitionPenaltyLogitsProcessor(0.5)(np.array([[1, 2]]), s)
    np.testing.assert_array_equal(out, [[2.0, -0.5, 1.0, -3.0, 1.0, 0.0]])
    assert s[0, 1] == -1.0  # input not modified


def test_repetition_penalty_ignores_left_padding_per_row():
    s = np.array([[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    ids = np.array([[0, 0, 2], [0, 1, 1]])
    # Row 0 ignores its first 2 positions (padding): only token 2 is penalised (1 / 4).
    # Row 1 ignores 1 position: tokens 1 penalised, 0 not (its only 0 is padding).
    out = RepetitionPenaltyLogitsProcessor(4.0, prompt_ignore_length=np.array([2, 1]))(ids, s)
    np.testing.assert_array_equal(out, [[1.0, 1.0, 0.25], [1.0, 0.25, 1.0]])
    # An int drops that many leading columns for every row: row 0 sees [2], row 1 sees [1].
    out = RepetitionPenaltyLogitsProcessor(4.0, prompt_ignore_length=2)(ids, s)
    np.testing.assert_array_equal(out, [[1.0, 1.0, 0.25], [1.0, 0.25, 1.0]])


# --- min new tokens ------------------------------------------------------------------------------------
def test_min_new_tokens_masks_eos_until_reached():
    proc = MinNewTokensLengthLogitsProcessor(prompt_length_to_skip=3, min_new_tokens=2, eos_token_id=[1, 3])
    s = np.array([[0.5, 0.7, 0.1, 0.9]])
    # 4 ids = prompt 3 + 1 new < 2: eos ids 1 and 3 are forbidden.
    np.testing.assert_array_equal(proc(np.zeros((1, 4), dtype=int), s), [[0.5, -INF, 0.1, -INF]])
    # 5 ids = 2 new: the minimum is reached, scores pass unchanged.
    np.testing.assert_array_equal(proc(np.zeros((1, 5), dtype=int), s), s)
    single = MinNewTokensLengthLogitsProcessor(0, 1, eos_token_id=2)
    assert kept(single(np.zeros((1, 0), dtype=int), s)) == [0, 1, 3]


# --- order ---------------------------------------------------------------------------------------------
def test_processor_order_is_transformers_order():
    procs = build_logits_processors(do_sample=True, temperature=0.7, top_k=5, top_p=0.9, min_p=0.1,
                                    repetition_penalty=1.2, min_new_tokens=2, eos_token_id=[3], prompt_length=4)
    # transformers GenerationMixin._get_logits_processor appends in this order.
    assert [type(p).__name__ for p in procs] == [
        "RepetitionPenaltyLogitsProcessor", "MinNewTokensLengthLogitsProcessor", "TemperatureLogitsWarper",
        "TopKLogitsWarper", "TopPLogitsWarper", "MinPLogitsWarper"]
    # Greedy: no warpers; neutral values add no processor.
    greedy = build_logits_processors(do_sample=False, temperature=0.7, top_k=5, top_p=0.9, repetition_penalty=1.2)
    assert [type(p).__name__ for p in greedy] == ["RepetitionPenaltyLogitsProcessor"]
    assert build_logits_processors(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.0) == []


def test_order_changes_the_result_as_derived():
    # Temperature before top-p: T = 0.5 gives [1, 4, 9, 16] / 30, ascending cumulative
    # [0.033, 0.167, 0.467, 1.0]; top_p 0.5 removes cumulative <= 0.5, so only id 3 remains.
    # (top-p first would keep ids 2 and 3: see test_top_p_hand_derived.)
    procs = build_logits_processors(do_sample=True, temperature=0.5, top_p=0.5, top_k=0)
    assert kept(procs(IDS, LOGP4)) == [3]
    # Top-k before top-p: k = 2 keeps {0.3, 0.4} -> renormalised [3/7, 4/7] = [0.43, 0.57]; ascending
    # cumulative [0, 0, 0.43, 1.0]; top_p 0.5 removes 0.43 -> only id 3. Top-p alone keeps ids 2, 3.
    procs = build_logits_processors(do_sample=True, top_k=2, top_p=0.5)
    assert kept(procs(IDS, LOGP4)) == [3]
    assert kept(TopPLogitsWarper(0.5)(IDS, LOGP4)) == [2, 3]


def test_logits_processor_list_applies_in_sequence():
    procs = LogitsProcessorList([TemperatureLogitsWarper(0.5), TemperatureLogitsWarper(0.5)])
    np.testing.assert_allclose(procs(IDS, LOGP4), LOGP4 * 4)


# --- sampling ------------------------------------------------------------------------------------------
def test_sampling_matches_the_distribution():
    # 20000 draws from [0.1, 0.2, 0.3, 0.4]: each frequency has sd sqrt(p(1-p)/n) <= 0.0035;
    # allow 5 sd = 0.0175.
    rng = make_rng(seed=1234)
    s = np.repeat(LOGP4, 20000, axis=0)
    draws = sample_from_scores(s, rng)
    freq = np.bincount(draws, minlength=4) / len(draws)
    assert np.abs(freq - P4).max() < 0.0175, freq


def test_sampling_never_picks_filtered_tokens():
    rng = make_rng(seed=0)
    s = np.repeat(TopPLogitsWarper(0.45)(IDS, LOGP4), 5000, axis=0)  # ids 0 and 1 filtered
    draws = sample_from_scores(s, rng)
    assert set(draws.tolist()) == {2, 3}
    # top-k 1 sampling is greedy
    one = TopKLogitsWarper(1)(IDS, np.repeat(LOGP4, 100, axis=0)[:1])
    assert sample_from_scores(one, rng).tolist() == greedy_from_scores(LOGP4).tolist() == [3]


def test_seeded_sampling_is_reproducible():
    s = np.repeat(LOGP4, 200, axis=0)
    a = sample_from_scores(s, make_rng(seed=7))
    b = sample_from_scores(s, make_rng(seed=7))
    c = sample_from_scores(s, make_rng(seed=8))
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()
    # an explicit Generator is used as given: default_rng(7) gives the seed-7 stream
    d = sample_from_scores(s, make_rng(rng=np.random.default_rng(7)))
    np.testing.assert_array_equal(a, d)


def test_all_filtered_row_is_an_error():
    with pytest.raises(GenerationConfigError, match="nothing to sample"):
        sample_from_scores(np.full((1, 3), -INF), make_rng(seed=0))


# --- invalid parameters ----------------------------------------------------------------------------------
@pytest.mark.parametrize("make, match", [
    (lambda: TemperatureLogitsWarper(0.0), "do_sample=False"),
    (lambda: TemperatureLogitsWarper(-1.0), "strictly positive"),
    (lambda: TopKLogitsWarper(0), "top_k"),
    (lambda: TopKLogitsWarper(-3), "top_k"),
    (lambda: TopKLogitsWarper(2.5), "top_k"),
    (lambda: TopPLogitsWarper(0.0), r"\(0, 1\]"),
    (lambda: TopPLogitsWarper(1.5), r"\(0, 1\]"),
    (lambda: TopPLogitsWarper(-0.1), r"\(0, 1\]"),
    (lambda: TopPLogitsWarper(0.5, min_tokens_to_keep=0), "min_tokens_to_keep"),
    (lambda: MinPLogitsWarper(1.5), r"\[0, 1\]"),
    (lambda: RepetitionPenaltyLogitsProcessor(0.0), "strictly positive"),
    (lambda: RepetitionPenaltyLogitsProcessor(-1.0), "strictly positive"),
    (lambda: MinNewTokensLengthLogitsProcessor(0, -1, 2), "min_new_tokens"),
    (lambda: MinNewTokensLengthLogitsProcessor(0, 1, -2), "eos_token_id"),
    (lambda: make_rng(seed=1, rng=np.random.default_rng(1)), "not both"),
    (lambda: make_rng(rng=np.random.RandomState(0)), "numpy.random.Generator"),
    (lambda: make_rng(seed=-1), "seed"),
])
def test_invalid_parameters_raise(make, match):
    with pytest.raises(GenerationConfigError, match=match):
        make()


def test_bad_scores_shape_raises():
    with pytest.raises(GenerationConfigError, match="batch, vocab"):
        TopKLogitsWarper(2)(IDS, np.zeros(4))


# --- properties ----------------------------------------------------------------------------------------
logit_rows = st.lists(st.floats(-20, 20, allow_nan=False), min_size=2, max_size=40)


@settings(max_examples=150, deadline=None)
@given(logit_rows, st.data())
def test_top_k_keeps_exactly_k_unless_ties(row, data):
    s = np.array([row])
    k = data.draw(st.integers(1, len(row)))
    out = TopKLogitsWarper(k)(IDS, s)
    kth = np.sort(s[0])[::-1][k - 1]
    # kept = every score >= the k-th largest: exactly k when there is no tie at the cut
    assert np.isfinite(out).sum() == (s[0] >= kth).sum() >= k
    if len(set(row)) == len(row):
        assert np.isfinite(out).sum() == k
    np.testing.assert_array_equal(out[np.isfinite(out)], s[np.isfinite(out)])


@settings(max_examples=150, deadline=None)
@given(logit_rows, st.floats(0.01, 1.0))
def test_top_p_keeps_the_smallest_prefix_reaching_p(row, p):
    s = np.array([row])
    probs = softmax(s)[0]
    # Stay away from float ties at the cut (where the rule depends on rounding).
    asc = np.sort(probs)
    assume(np.abs(np.cumsum(asc) - (1 - p)).min() > 1e-9)
    assume(len(set(row)) == len(row))
    keep = np.isfinite(TopPLogitsWarper(p)(IDS, s)[0])
    # the kept tokens are the most probable ones
    assert probs[keep].min() >= probs[~keep].max(initial=0)
    mass = probs[keep].sum()
    # they reach p, and without the least probable of them they would not
    assert mass >= p - 1e-9
    assert mass - probs[keep].min() < p + 1e-9


@settings(max_examples=150, deadline=None)
@given(logit_rows, st.floats(0.0, 1.0))
def test_min_p_keeps_tokens_above_the_scaled_threshold(row, min_p):
    s = np.array([row])
    probs = softmax(s)[0]
    threshold = min_p * probs.max()
    assume(np.abs(probs - threshold).min() > 1e-12)
    keep = np.isfinite(MinPLogitsWarper(min_p)(IDS, s)[0])
    np.testing.assert_array_equal(keep, probs >= threshold)
    assert keep.any()  # the top token always passes (p_max >= min_p * p_max)
