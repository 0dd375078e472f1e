"""Pair-building strategies: hand-worked cases, ties never become preferences."""

from rlhf.data.strategies import all_pairs, best_vs_worst, full_ranking


def test_best_vs_worst():
    assert best_vs_worst([0.2, 0.9, 0.1, 0.5]).rankings == [[1, 2]]
    tied = best_vs_worst([0.5, 0.5, 0.5])
    assert tied.rankings == [] and tied.ties_dropped == 1


def test_all_pairs_skips_ties():
    prefs = all_pairs([0.2, 0.9, 0.2])
    # pairs (0,1) -> [1,0]; (0,2) tie; (1,2) -> [1,2]
    assert prefs.rankings == [[1, 0], [1, 2]]
    assert prefs.ties_dropped == 1


def test_full_ranking_keeps_one_of_each_tie():
    prefs = full_ranking([0.3, 0.8, 0.3, 0.1])
    assert prefs.rankings == [[1, 0, 3]] and prefs.ties_dropped == 1
    assert full_ranking([0.4, 0.4]).rankings == []


def test_tolerance():
    assert all_pairs([0.5, 0.5001], tie_tolerance=1e-3).rankings == []
    assert all_pairs([0.5, 0.5001]).rankings == [[1, 0]]


def test_uniform_preferences_keep_one_width():
    from rlhf.data.strategies import uniform_preferences

    full = uniform_preferences("ranking", [0.1, 0.9, 0.5, 0.3], 0.0)
    assert full.rankings == [[1, 2, 3, 0]] and full.ties_dropped == 0
    tied = uniform_preferences("ranking", [0.1, 0.9, 0.1, 0.3], 0.0)
    # one response tied (dropped), which shortens the ranking to 3: left out, counted
    assert tied.rankings == [] and tied.ties_dropped == 2
    assert uniform_preferences("best_vs_worst", [0.1, 0.9, 0.1], 0.0).rankings == [[1, 0]]
