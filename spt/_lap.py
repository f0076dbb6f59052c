"""Sparse linear assignment shared by linking and scoring (one LAP per connected component)."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components


def solve_sparse_lap(
    rows: np.ndarray, cols: np.ndarray, cost: np.ndarray, n_rows: int, n_cols: int
):
    """Optimal optional assignment on a sparse bipartite graph of negative-cost edges.

    Minimises the summed cost of a matching in which every edge is optional (absent pairs and
    unmatched nodes cost 0), by one rectangular LAP per connected component (Jonker-Volgenant,
    :func:`scipy.optimize.linear_sum_assignment`), so the work grows with the size of the largest
    cluster of competing pairs, never combinatorially.

    Parameters
    ----------
    rows, cols : ndarray of int
        Edge end points (row and column node indices).
    cost : ndarray of float
        Edge costs; only negative edges can be chosen.
    n_rows, n_cols : int
        Numbers of row and column nodes.

    Returns
    -------
    rows, cols : ndarray of int
        The chosen edges.
    """
    graph = coo_matrix((np.ones(len(rows)), (rows, cols + n_rows)), shape=(n_rows + n_cols,) * 2)
    neg = cost < 0
    rows, cols, cost = rows[neg], cols[neg], cost[neg]
    if len(rows) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    _, label = connected_components(graph, directed=False)
    comp = label[rows]
    order = np.argsort(comp, kind="stable")
    rows, cols, cost, comp = rows[order], cols[order], cost[order], comp[order]
    split = np.flatnonzero(np.diff(comp)) + 1
    out_r, out_c = [], []
    for idx in np.split(np.arange(len(rows)), split):
        if len(idx) == 1:
            out_r.append(rows[idx])
            out_c.append(cols[idx])
            continue
        ur, ri = np.unique(rows[idx], return_inverse=True)
        uc, ci = np.unique(cols[idx], return_inverse=True)
        mat = np.zeros((len(ur), len(uc)))
        mat[ri, ci] = cost[idx]
        a, b = linear_sum_assignment(mat)
        good = mat[a, b] < 0
        out_r.append(ur[a[good]])
        out_c.append(uc[b[good]])
    return np.concatenate(out_r), np.concatenate(out_c)
