"""Small-sample statistics for sweep reports, without scipy: mean, sample sd, Student t quantiles,
paired differences with t intervals, and Spearman's rank correlation."""
from __future__ import annotations

import math


def mean(xs) -> float:
    xs = list(xs)
    if not xs:
        raise ValueError("mean of no values")
    return math.fsum(xs) / len(xs)


def sd(xs) -> float:
    """Sample standard deviation (n - 1 in the denominator); nan for fewer than two values."""
    xs = list(xs)
    if len(xs) < 2:
        return float("nan")
    m = mean(xs)
    return math.sqrt(math.fsum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularised incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    lbeta = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(lbeta) * _betacf(a, b, x) / a
    return 1.0 - math.exp(lbeta) * _betacf(b, a, 1.0 - x) / b


def _t_tail(t: float, df: float) -> float:
    """P(T > |t|) for Student's t with df degrees of freedom."""
    if df <= 0:
        raise ValueError(f"degrees of freedom must be > 0, got {df}")
    return 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with df degrees of freedom."""
    tail = _t_tail(t, df)
    return 1.0 - tail if t > 0 else tail


def t_sf(t: float, df: float) -> float:
    """P(T > t), from the tail directly: 1 - t_cdf(t) rounds to 0 below ~1e-16, this does not."""
    tail = _t_tail(t, df)
    return tail if t > 0 else 1.0 - tail


def t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t (bisection on t_cdf; accurate to ~1e-10)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def summary(xs) -> dict:
    xs = [float(x) for x in xs]
    return {"n": len(xs), "mean": mean(xs) if xs else float("nan"), "sd": sd(xs),
            "min": min(xs) if xs else float("nan"), "max": max(xs) if xs else float("nan")}


def paired(a, b, level: float = 0.95) -> dict:
    """Paired differences a[i] - b[i]: mean, sd, n, the two-sided `level` t interval of the mean
    difference (nan bounds for n < 2), and how many pairs are positive / negative / zero."""
    a, b = list(a), list(b)
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} and {len(b)}")
    d = [float(x) - float(y) for x, y in zip(a, b)]
    n = len(d)
    out = {"n": n, "mean": mean(d) if d else float("nan"), "sd": sd(d), "diffs": d,
           "positive": sum(x > 0 for x in d), "negative": sum(x < 0 for x in d), "level": level}
    if n >= 2:
        q = t_quantile(0.5 + level / 2.0, n - 1)
        half = q * out["sd"] / math.sqrt(n)
        out.update(t=q, half_width=half, lo=out["mean"] - half, hi=out["mean"] + half)
    else:
        out.update(t=float("nan"), half_width=float("nan"), lo=float("nan"), hi=float("nan"))
    return out


def ranks(xs) -> list:
    """1-based ranks, ties get their average rank."""
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    r = [0.0] * len(xs)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        for m in range(i, j + 1):
            r[order[m]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return r


def pearson(x, y) -> float:
    x, y = list(map(float, x)), list(map(float, y))
    if len(x) != len(y) or len(x) < 2:
        return float("nan")
    mx, my = mean(x), mean(y)
    sxy = math.fsum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx = math.fsum((a - mx) ** 2 for a in x)
    syy = math.fsum((b - my) ** 2 for b in y)
    if sxx == 0 or syy == 0:
        return float("nan")
    return sxy / math.sqrt(sxx * syy)


def spearman(x, y) -> float:
    """Spearman's rank correlation (Pearson's r of the average ranks); nan when undefined."""
    return pearson(ranks(list(x)), ranks(list(y)))
