"""Pearson's chi-square test of sampled token windows against their exact joint law.

Shared by the lossless tests of the loop (tests/decoding/test_lossless.py), of
padded vocabularies (test_vocabulary.py) and of the sharded loop
(test_sharding.py). Loaded by path, as tests/decoding is not a package.
"""

import numpy as np
from scipy import stats


def chi_square_pvalue(tokens, probs, vocab_size: int) -> float:
    """Goodness of fit of the rows of ``tokens`` (windows of token ids) to ``probs``, the
    exact probability of every window, flattened in C order over ``vocab_size`` ids a
    position. Cells expecting fewer than 5 counts are pooled into one, so the test's
    chi-square approximation holds; a pool expecting nothing is left out."""
    tokens = np.asarray(tokens)
    cells = np.ravel_multi_index(tuple(tokens.T), (vocab_size,) * tokens.shape[1])
    observed = np.bincount(cells, minlength=probs.size).astype(np.float64)
    expected = probs * observed.sum()
    small = expected < 5
    obs = np.append(observed[~small], observed[small].sum())
    exp = np.append(expected[~small], expected[small].sum())
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    return stats.chisquare(obs, exp * obs.sum() / exp.sum()).pvalue
