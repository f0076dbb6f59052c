"""Sparse linear assignment shared by linking and scoring (one LAP per connected component)."""

from __future__ import annotations

import numpy as np
from numba import njit


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
    unmatched nodes cost 0), by one rectangular LAP per connected component (the shortest
    augmenting path algorithm of :func:`scipy.optimize.linear_sum_assignment`, Crouse 2016,
    compiled here so the many small components of a frame cost no Python overhead), so the
    work grows with the size of the largest cluster of competing pairs, never
    combinatorially. A component whose edges share one row
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
    bounds = np.flatnonzero(np.concatenate([[True], comp[1:] != comp[:-1], [True]]))
    r, c = _solve_components(rows, cols, cost, bounds)
    out_r.append(r)
    out_c.append(c)
    return np.concatenate(out_r), np.concatenate(out_c)


@njit(cache=True, nogil=True)
def _solve_components(rows, cols, cost, bounds):
    """Chosen (negative) edges of the components ``bounds[k]:bounds[k+1]`` (edges sorted by
    component), one dense LAP each on the component's own rows and columns (ascending)."""
    out_r = np.empty(len(rows), np.int64)
    out_c = np.empty(len(rows), np.int64)
    n_out = 0
    for k in range(len(bounds) - 1):
        a, b = bounds[k], bounds[k + 1]
        lr = np.unique(rows[a:b])
        lc = np.unique(cols[a:b])
        nr, nc = len(lr), len(lc)
        ri = np.searchsorted(lr, rows[a:b])
        ci = np.searchsorted(lc, cols[a:b])
        mat = np.zeros((nr, nc))
        for e in range(b - a):
            mat[ri[e], ci[e]] = cost[a + e]
        if nr <= nc:
            col4row = _dense_lap(mat)
            for i in range(nr):
                if mat[i, col4row[i]] < 0:
                    out_r[n_out], out_c[n_out] = lr[i], lc[col4row[i]]
                    n_out += 1
        else:
            # more rows than columns: solve the transpose, as scipy does
            row4col = _dense_lap(mat.T.copy())
            for j in range(nc):
                if mat[row4col[j], j] < 0:
                    out_r[n_out], out_c[n_out] = lr[row4col[j]], lc[j]
                    n_out += 1
    return out_r[:n_out], out_c[:n_out]


@njit(cache=True, nogil=True)
def _dense_lap(cost):
    """Column assigned to each row of a dense (nr <= nc) cost matrix, minimising the sum.

    Shortest augmenting paths with dual variables (Crouse, IEEE TAES 52(4) 2016, pp. 1685-1686),
    the algorithm of :func:`scipy.optimize.linear_sum_assignment`, with its tie-breaking (among
    equally short paths prefer a free column; columns scanned from the last), so both give
    the same assignment.
    """
    nr, nc = cost.shape
    c = cost - cost.min()
    u = np.zeros(nr)
    v = np.zeros(nc)
    spc = np.empty(nc)
    path = np.full(nc, -1, np.int64)
    col4row = np.full(nr, -1, np.int64)
    row4col = np.full(nc, -1, np.int64)
    in_sr = np.zeros(nr, np.bool_)
    in_sc = np.zeros(nc, np.bool_)
    remaining = np.empty(nc, np.int64)
    for cur in range(nr):
        for it in range(nc):
            remaining[it] = nc - it - 1
        n_rem = nc
        in_sr[:] = False
        in_sc[:] = False
        spc[:] = np.inf
        min_val = 0.0
        i = cur
        sink = -1
        while sink == -1:
            index = -1
            lowest = np.inf
            in_sr[i] = True
            for it in range(n_rem):
                j = remaining[it]
                r = min_val + c[i, j] - u[i] - v[j]
                if r < spc[j]:
                    path[j] = i
                    spc[j] = r
                if spc[j] < lowest or (spc[j] == lowest and row4col[j] == -1):
                    lowest = spc[j]
                    index = it
            min_val = lowest
            j = remaining[index]
            if row4col[j] == -1:
                sink = j
            else:
                i = row4col[j]
            in_sc[j] = True
            n_rem -= 1
            remaining[index] = remaining[n_rem]
        u[cur] += min_val
        for i in range(nr):
            if in_sr[i] and i != cur:
                u[i] += min_val - spc[col4row[i]]
        for j in range(nc):
            if in_sc[j]:
                v[j] -= min_val - spc[j]
        j = sink
        while True:
            i = path[j]
            row4col[j] = i
            col4row[i], j = j, col4row[i]
            if i == cur:
                break
    return col4row
