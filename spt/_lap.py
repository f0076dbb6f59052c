"""Sparse linear assignment shared by linking and scoring (one LAP per connected component)."""

from __future__ import annotations

import numpy as np
from numba import njit
from scipy.optimize import linear_sum_assignment


@njit(cache=True, nogil=True)
def _edge_components(rows: np.ndarray, cols: np.ndarray, n_rows: int, n_nodes: int) -> np.ndarray:
    """Connected-component label of every edge of a bipartite graph (union-find; columns are
    nodes ``n_rows + col``); labels are root node ids, not consecutive."""
    parent = np.arange(n_nodes)
    for e in range(len(rows)):
        a = rows[e]
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        b = cols[e] + n_rows
        while parent[b] != b:
            parent[b] = parent[parent[b]]
            b = parent[b]
        if a != b:
            parent[a] = b
    label = np.empty(len(rows), np.int64)
    for e in range(len(rows)):
        a = rows[e]
        while parent[a] != a:
            a = parent[a]
        label[e] = a
    return label


def solve_sparse_lap(
    rows: np.ndarray, cols: np.ndarray, cost: np.ndarray, n_rows: int, n_cols: int
):
    """Optimal optional assignment on a sparse bipartite graph of negative-cost edges.

    Minimises the summed cost of a matching in which every edge is optional (absent pairs and
    unmatched nodes cost 0), by one rectangular LAP per connected component (Jonker-Volgenant,
    :func:`scipy.optimize.linear_sum_assignment`), so the work grows with the size of the largest
    cluster of competing pairs, never combinatorially. A component whose edges share one row
    or one column (a star) is solved by its cheapest edge, without a LAP.

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
    rows = np.asarray(rows, np.int64)
    cols = np.asarray(cols, np.int64)
    cost = np.asarray(cost, np.float64)
    neg = cost < 0
    rows, cols, cost = rows[neg], cols[neg], cost[neg]
    if len(rows) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    comp = _edge_components(rows, cols, n_rows, n_rows + n_cols)
    # edges by component, cheapest first within a component
    order = np.lexsort((cost, comp))
    rows, cols, cost, comp = rows[order], cols[order], cost[order], comp[order]
    first = np.concatenate([[True], comp[1:] != comp[:-1]])
    start = np.flatnonzero(first)
    # stars (one row or one column in the component): the cheapest edge is optimal
    cid = np.cumsum(first) - 1
    r_lo = np.minimum.reduceat(rows, start)
    r_hi = np.maximum.reduceat(rows, start)
    c_lo = np.minimum.reduceat(cols, start)
    c_hi = np.maximum.reduceat(cols, start)
    star = (r_lo == r_hi) | (c_lo == c_hi)
    take = first & star[cid]
    out_r, out_c = [rows[take]], [cols[take]]
    if star.all():
        return out_r[0], out_c[0]
    # the other components: one dense LAP each, on the component's own row and column indices
    sel = ~star[cid]
    rows, cols, cost, comp = rows[sel], cols[sel], cost[sel], cid[sel]
    ri = _local_index(comp, rows)
    ci = _local_index(comp, cols)
    bounds = np.flatnonzero(np.concatenate([[True], comp[1:] != comp[:-1], [True]]))
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        mat = np.zeros((ri[a:b].max() + 1, ci[a:b].max() + 1))
        mat[ri[a:b], ci[a:b]] = cost[a:b]
        r, c = linear_sum_assignment(mat)
        good = mat[r, c] < 0
        lr = np.full(mat.shape[0], -1)
        lr[ri[a:b]] = rows[a:b]
        lc = np.full(mat.shape[1], -1)
        lc[ci[a:b]] = cols[a:b]
        out_r.append(lr[r[good]])
        out_c.append(lc[c[good]])
    return np.concatenate(out_r), np.concatenate(out_c)


def _local_index(comp: np.ndarray, node: np.ndarray) -> np.ndarray:
    """Index of each edge's ``node`` among the distinct nodes of its component (0, 1, ...);
    ``comp`` sorted."""
    order = np.lexsort((node, comp))
    c, n = comp[order], node[order]
    new_node = np.concatenate([[True], (c[1:] != c[:-1]) | (n[1:] != n[:-1])])
    new_comp = np.concatenate([[True], c[1:] != c[:-1]])
    rank = np.cumsum(new_node) - 1
    base = np.maximum.accumulate(np.where(new_comp, rank, 0))
    out = np.empty(len(node), np.int64)
    out[order] = rank - base
    return out
