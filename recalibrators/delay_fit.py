"""Delay-distribution estimators on a log-spaced delay histogram (pure numpy).

The data are decayed masses per delay bin j = [edges[j], edges[j+1]) of the window [0, W]:
`events[j]` conversions with delay in bin j, `censored[j]` windows still open whose elapsed time is in bin j
(no conversion yet), and `survivors`, windows closed without a conversion (censored at W).

- `life_table` is the Kaplan-Meier estimate on the grid (the actuarial, Cutler-Ederer form: a window
  censored inside bin j is at risk for half of it) of S(d) = P(no conversion by d) = 1 - p * F(d).
- `fit_lognormal_cure` fits the mixture-cure model P(conversion by d) = p * Phi((ln d - mu) / sigma) to the
  same data by maximum likelihood; it supplies the share of in-window conversions beyond the horizon the
  life table can see (a young stream has no window older than its age).
- `delay_curve` combines them into G(d) = F(d) / F(W): the share of a window's eventual conversions seen
  after an elapsed time d.

>>> edges = delay_edges(7 * 86_400_000, 24, 60_000)
>>> surv, at_risk = life_table(np.r_[10.0, np.zeros(23)], np.zeros(24), 90.0)
>>> round(float(surv[-1]), 3)
0.9
"""

from __future__ import annotations

import numpy as np

__all__ = ["delay_curve", "delay_edges", "fit_lognormal_cure", "life_table", "norm_cdf", "spread_uniform"]


def delay_edges(window_ms: float, n_bins: int, min_delay_ms: float) -> np.ndarray:
    """n_bins + 1 edges: 0, then geometric from min_delay_ms to window_ms."""
    return np.concatenate(([0.0], np.geomspace(min_delay_ms, window_ms, n_bins)))


def norm_cdf(x: np.ndarray) -> np.ndarray:
    """Standard normal CDF via Numerical Recipes' erfc (relative error < 1.2e-7 everywhere, tails included)."""
    z = np.abs(np.asarray(x, dtype=np.float64)) / np.sqrt(2.0)
    t = 1.0 / (1.0 + 0.5 * z)
    inner = 0.17087277  # Horner form of Numerical Recipes' erfcc polynomial
    for c in (-0.82215223, 1.48851587, -1.13520398, 0.27886807, -0.18628806, 0.09678418, 0.37409196, 1.00002368):
        inner = c + t * inner
    poly = -z * z - 1.26551223
    erfc = t * np.exp(poly + t * inner)
    half = 0.5 * erfc  # P(N > |x|)
    return np.where(np.asarray(x) >= 0, 1.0 - half, half)


def spread_uniform(lo: np.ndarray, hi: np.ndarray, mass: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Spread each mass uniformly over [lo, hi] (ages) onto the bins of `edges`; a point mass (lo == hi)
    lands in its bin. Ages beyond the last edge count in the last bin."""
    lo = np.clip(lo, 0.0, edges[-1])
    hi = np.clip(hi, 0.0, edges[-1])
    width = hi - lo
    overlap = np.clip(np.minimum(hi[:, None], edges[None, 1:]) - np.maximum(lo[:, None], edges[None, :-1]), 0.0, None)
    frac = np.where(width[:, None] > 0, overlap / np.where(width > 0, width, 1.0)[:, None], 0.0)
    point = width <= 0
    if point.any():
        j = np.clip(np.searchsorted(edges, lo[point], side="right") - 1, 0, edges.size - 2)
        frac[np.flatnonzero(point), j] = 1.0
    return mass @ frac


def life_table(events: np.ndarray, censored: np.ndarray, survivors: float) -> tuple[np.ndarray, np.ndarray]:
    """(S at each bin's upper edge, mass at risk at each bin's start). Censored mass in bin j is at risk for
    half the bin (actuarial); `survivors` are at risk in every bin. Bins with nobody at risk keep S."""
    exits = events + censored
    at_risk = survivors + np.cumsum(exits[::-1])[::-1]
    exposed = at_risk - 0.5 * censored
    hazard = np.where(exposed > 0, events / np.where(exposed > 0, exposed, 1.0), 0.0)
    return np.cumprod(1.0 - np.clip(hazard, 0.0, 1.0)), at_risk


def _profile_p(e_total: float, cens: np.ndarray, f_cens: np.ndarray) -> np.ndarray:
    """argmax_p of E log p + sum_k c_k log(1 - p F_k) for every row of f_cens (bisection on the score,
    which decreases in p; p in (0, 1))."""
    lo = np.full(f_cens.shape[:-1], 1e-12)
    hi = np.ones(f_cens.shape[:-1])
    for _ in range(40):  # to ~1e-12 of the unit interval
        mid = 0.5 * (lo + hi)
        score = e_total / mid - np.sum(cens * f_cens / np.maximum(1.0 - mid[..., None] * f_cens, 1e-300), axis=-1)
        up = score > 0
        lo = np.where(up, mid, lo)
        hi = np.where(up, hi, mid)
    return 0.5 * (lo + hi)


def _cure_loglik(
    edges: np.ndarray, events: np.ndarray, cens_ages: np.ndarray, cens: np.ndarray, mu: np.ndarray, sigma: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Log likelihood on grids of (mu, sigma), p profiled out; returns (loglik, p)."""
    log_e = np.log(np.maximum(edges[1:], 1e-300))
    f_up = norm_cdf((log_e[None, None, :] - mu[..., None]) / sigma[..., None])
    f_lo = np.concatenate((np.zeros((*f_up.shape[:-1], 1)), f_up[..., :-1]), axis=-1)
    f_cens = norm_cdf((np.log(cens_ages)[None, None, :] - mu[..., None]) / sigma[..., None])
    p = _profile_p(float(events.sum()), cens, f_cens)
    ll = np.sum(events * np.log(np.maximum(p[..., None] * (f_up - f_lo), 1e-300)), axis=-1)
    ll += np.sum(cens * np.log(np.maximum(1.0 - p[..., None] * f_cens, 1e-300)), axis=-1)
    return ll, p


def fit_lognormal_cure(
    edges: np.ndarray, events: np.ndarray, censored: np.ndarray, survivors: float
) -> tuple[float, float, float]:
    """Maximum-likelihood (p, mu, sigma) of P(conversion by d) = p Phi((ln d - mu) / sigma) on binned data:
    conversions are interval-censored to their delay bin, open windows are right-censored at their bin's
    midpoint, survivors at W. A coarse grid over (mu, sigma), then zooms around the best point."""
    mids = 0.5 * (edges[:-1] + edges[1:])
    cens_ages = np.concatenate((mids, [edges[-1]]))
    cens = np.concatenate((censored, [survivors]))
    mu_c = np.linspace(np.log(edges[1]), np.log(edges[-1]) + 3.0, 13)
    sig_c = np.linspace(0.2, 4.0, 10)
    d_mu, d_sig = mu_c[1] - mu_c[0], sig_c[1] - sig_c[0]
    best = (0.0, 0.0, 0.0)
    for _ in range(6):  # the grid, then five zooms by 3 (final steps ~0.004 in mu, ~0.002 in sigma)
        mu, sigma = np.meshgrid(mu_c, sig_c, indexing="ij")
        ll, p = _cure_loglik(edges, events, cens_ages, cens, mu, sigma)
        i, k = np.unravel_index(int(np.argmax(ll)), ll.shape)
        best = (float(mu[i, k]), float(sigma[i, k]), float(p[i, k]))
        d_mu, d_sig = d_mu / 3.0, d_sig / 3.0
        mu_c = best[0] + d_mu * np.arange(-4, 5)
        sig_c = np.maximum(best[1] + d_sig * np.arange(-4, 5), 0.05)
    return best[2], best[0], best[1]


def delay_curve(
    edges: np.ndarray,
    events: np.ndarray,
    censored: np.ndarray,
    survivors: float,
    min_at_risk: float,
    tail: tuple[np.ndarray, str] | None = None,
) -> tuple[np.ndarray, str] | None:
    """G at every edge (G(0) = 0, G(W) = 1) and how it was made, or None without any conversion.

    Life table up to the horizon H, the last edge that `min_at_risk` windows have outlived; if H < W, the
    share of in-window conversions after H comes from `tail` (G and method of a coarser level of the segment
    fallback chain, which sees more windows) when given, else from the lognormal cure fit of these data:
        G(d) = (1 - S(d)) / (1 - S(H)) * T(H)   for d <= H,      G(d) = T(d)   beyond   (T = tail or F / F(W)).
    """
    if not events.sum() > 0:
        return None
    surv, at_risk = life_table(events, censored, survivors)
    incidence = np.concatenate(([0.0], 1.0 - surv))  # p F at the edges, as far as the table sees
    # bin j is seen when min_at_risk windows outlive it (older than its upper edge): a bin the oldest
    # windows only reach into would under-count its conversions
    ok = np.concatenate((at_risk[1:], [survivors])) >= min_at_risk
    h = int(np.argmin(ok)) if not ok.all() else ok.size  # bins 0..h-1 are seen
    if h == ok.size and incidence[-1] > 0:
        return incidence / incidence[-1], "life_table"
    if tail is not None:
        g, method = tail[0].copy(), tail[1]
        suffix = "parent"
    else:
        _, mu, sigma = fit_lognormal_cure(edges, events, censored, survivors)
        with np.errstate(divide="ignore"):
            f = norm_cdf((np.log(edges) - mu) / sigma)
        f[0] = 0.0
        g, method = f / f[-1], "lognormal"
        suffix = method
    if h > 0 and incidence[h] > 0:
        g[: h + 1] = incidence[: h + 1] / incidence[h] * g[h]
        return g, f"life_table+{suffix}"
    return g, method
