"""The capped top-N kernel (``watchnext.kernels.capped_rank``) against a greedy pure-Python reference,
with the per-user cut the blend's weight search runs on and without it."""

from __future__ import annotations

import numpy as np
import pytest

from watchnext import kernels


def _greedy(user, item, score, group, n: int, cap: int | None) -> np.ndarray:  # noqa: ANN001
    """Each user's rows in (score desc, item asc) order: rows within their group's cap first, then
    the capped-out ones, the first n of those in score order ranked 1..n."""
    rank = np.zeros(len(user), np.int32)
    for u in np.unique(user):
        rows = sorted(np.flatnonzero(user == u), key=lambda r: (-score[r], item[r]))
        seen: dict[int, int] = {}
        taken, rest = [], []
        for r in rows:
            if cap is None or seen.get(group[r], 0) < cap:
                seen[group[r]] = seen.get(group[r], 0) + 1
                taken.append(r)
            else:
                rest.append(r)
        chosen = sorted((taken + rest)[:n], key=lambda r: (-score[r], item[r]))
        for k, r in enumerate(chosen):
            rank[r] = k + 1
    return rank


def _pool(rng: np.random.Generator, n_users: int) -> tuple[np.ndarray, ...]:
    counts = rng.integers(1, 120, n_users)
    user = np.repeat(np.arange(n_users) * 3 + 5, counts)  # sorted, not dense
    item = np.concatenate([np.sort(rng.choice(400, c, replace=False)) for c in counts])
    group = rng.integers(0, int(rng.integers(1, 6)), len(user))
    # coarse scores, many exact zeros: ties at the cut are the common case, not the exception
    score = np.round(rng.random(len(user)) * 3, 1) * (rng.random(len(user)) < 0.6)
    return user, item, score, group


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(("n", "cap"), [(10, 4), (5, 1), (3, None)])
def test_capped_rank_with_the_cut_equals_the_greedy_rule(
    monkeypatch: pytest.MonkeyPatch, seed: int, n: int, cap: int | None
) -> None:
    monkeypatch.setattr(kernels, "PREFILTER_MIN_ROWS", 0)  # the cut on these small pools too
    user, item, score, group = _pool(np.random.default_rng(seed), 60)
    expected = _greedy(user, item, score, group, n, cap)
    np.testing.assert_array_equal(kernels.capped_rank(user, item, score, group, n, cap), expected)
    shuffled = np.random.default_rng(seed).permutation(len(user))  # unsorted users: no cut
    np.testing.assert_array_equal(
        kernels.capped_rank(user[shuffled], item[shuffled], score[shuffled], group[shuffled], n, cap),
        expected[shuffled],
    )


def test_a_user_short_of_eligible_rows_in_the_cut_is_ranked_on_all_rows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """User 0's 40 best rows share one group: with cap 1 the cut (4 x n rows) holds one eligible row,
    and the rows of other groups further down must still be chosen before capped-out ones."""
    monkeypatch.setattr(kernels, "PREFILTER_MIN_ROWS", 0)
    user = np.repeat([0, 1], [60, 60])
    item = np.tile(np.arange(60), 2)
    score = np.concatenate([np.linspace(2.0, 1.0, 60), np.linspace(1.0, 0.0, 60)])
    group = np.concatenate([np.where(np.arange(60) < 40, 0, np.arange(60)), np.arange(60) % 7])
    got = kernels.capped_rank(user, item, score, group, 10, 1)
    np.testing.assert_array_equal(got, _greedy(user, item, score, group, 10, 1))
    assert got[0] == 1 and (got[1:40] == 0).all()  # one row of group 0, then rows 40.. of own groups
    np.testing.assert_array_equal(got[40:49], np.arange(2, 11))
