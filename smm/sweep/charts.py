"""The sweep summary's plots as matplotlib figures.

The optimization history is Optuna's own (``optuna.visualization.matplotlib``). Optuna 2.10's
parallel-coordinate and importance plots fail with current matplotlib (``cm.get_cmap`` is gone,
the colorbar needs an axes) and its default fANOVA importance fails with NumPy 2, so those two
are drawn here; importance comes from Optuna's mean-decrease-impurity evaluator (a random forest).
"""
from __future__ import annotations

import math
import warnings


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def optimization_history(study):
    from optuna.visualization import matplotlib as optuna_plots

    _pyplot()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the matplotlib backend is "experimental" in Optuna 2.x
        return optuna_plots.plot_optimization_history(study).figure


def _scaled(trials, name):
    """The trials' values of parameter ``name`` mapped to 0..1, and the axis' end labels."""
    from optuna.distributions import CategoricalDistribution, IntLogUniformDistribution, LogUniformDistribution

    distribution = trials[0].distributions[name]
    values = [t.params[name] for t in trials]
    if isinstance(distribution, CategoricalDistribution):
        choices = list(distribution.choices)
        span = max(len(choices) - 1, 1)
        return [choices.index(v) / span for v in values], (str(choices[0]), str(choices[-1]))
    low, high = distribution.low, distribution.high
    if isinstance(distribution, (LogUniformDistribution, IntLogUniformDistribution)):
        values, low, high = [math.log10(v) for v in values], math.log10(low), math.log10(high)
        labels = (f"{distribution.low:.3g}", f"{distribution.high:.3g}")
    else:
        labels = (f"{low:.3g}", f"{high:.3g}")
    span = (high - low) or 1.0
    return [(v - low) / span for v in values], labels


def parallel_coordinate(study):
    """One line per completed trial across every parameter's axis, coloured by the objective."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    plt = _pyplot()
    trials = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    names = sorted({name for t in trials for name in t.params if all(name in u.params for u in trials)})
    if not trials or not names:
        raise ValueError("needs a completed trial with parameters")
    columns = [_scaled(trials, name) for name in names]
    objective = [t.value for t in trials]
    norm = Normalize(min(objective), max(objective) if max(objective) > min(objective) else min(objective) + 1)
    cmap = plt.get_cmap("viridis_r" if study.direction.name == "MINIMIZE" else "viridis")
    fig, ax = plt.subplots(figsize=(8, 4.5))
    xs = list(range(len(names)))
    for i, trial in enumerate(trials):
        ax.plot(xs, [column[0][i] for column in columns], color=cmap(norm(trial.value)), alpha=0.8, marker="o", ms=3)
    for x, (_, (low, high)) in zip(xs, columns):
        ax.axvline(x, color="#999", lw=0.8)
        ax.annotate(low, (x, 0), xytext=(3, -12), textcoords="offset points", fontsize=7)
        ax.annotate(high, (x, 1), xytext=(3, 4), textcoords="offset points", fontsize=7)
    ax.set_xticks(xs, names, rotation=20, fontsize=8)
    ax.set_yticks([])
    ax.set_ylim(-0.1, 1.1)
    ax.set_title("Parallel coordinates (completed trials)")
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, label="objective")
    return fig


def param_importances(study):
    """Horizontal bars: each parameter's share of the objective's variance (random-forest impurity)."""
    import optuna

    plt = _pyplot()
    evaluator = optuna.importance.MeanDecreaseImpurityImportanceEvaluator(seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        importances = optuna.importance.get_param_importances(study, evaluator=evaluator)
    names = list(importances)[::-1]
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(names) + 1.5))
    ax.barh(names, [importances[n] for n in names], color="#3b6fb6")
    for y, name in enumerate(names):
        ax.annotate(f"{importances[name]:.2f}", (importances[name], y), xytext=(3, -3), textcoords="offset points", fontsize=8)
    ax.set_xlabel("importance (share of the objective's variance)")
    ax.set_title("Parameter importance")
    return fig
