"""Mutual-information peaks in reasoning trajectories (Qian et al., arXiv 2506.02867; RESEARCH.md
section 10): does RL create MI peaks at thinking tokens, or does the base already have them?

    from analyses.mi_peaks import hsic_paper, hsic_gaussian, estimate_mi, find_peaks_iqr
    trajs = greedy_trajectories(model, prompts, gold_texts, layer=None)   # last block, pre-norm
    compute_mi(trajs, method="hsic_paper")                                # traj.mi: [T]
    stats = peak_stats(trajs[0].mi)                                       # peaks, AOM
    result = run_mi_peaks({"base": base, "rl": rl}, organism_problem_set(64))

Modules: ``estimators`` (hsic_paper, hsic_gaussian + permutation test), ``peaks`` (IQR and
top-k rules, AOM), ``trajectories`` (states and gold states through hooks), ``comparison``
(per-model summaries with bootstrap CIs and controls), ``interventions`` (peak-token
suppression, thinking-token test-time scaling), ``pipeline`` (the whole comparison),
``plotting``.
"""

from analyses.mi_peaks.comparison import (
    Estimate,
    ModelMiSummary,
    StrategyEnrichment,
    bootstrap_mean,
    compute_mi,
    label_trajectories,
    paired_difference,
    planted_dependence_control,
    strategy_enrichment,
    summarise_model,
)
from analyses.mi_peaks.estimators import (
    HsicTest,
    estimate_mi,
    hsic_gaussian,
    hsic_paper,
    hsic_permutation_test,
)
from analyses.mi_peaks.interventions import (
    ban_tokens,
    peak_token_suppression,
    thinking_token_scaling,
)
from analyses.mi_peaks.peaks import (
    PeakStats,
    average_outlier_magnitude,
    find_peaks,
    find_peaks_iqr,
    find_peaks_topk,
    peak_stats,
)
from analyses.mi_peaks.pipeline import (
    MiPeaksConfig,
    MiPeaksResult,
    MiProblemSet,
    organism_problem_set,
    run_mi_peaks,
)
from analyses.mi_peaks.trajectories import (
    Trajectory,
    collect_trajectories,
    decode_states,
    greedy_trajectories,
    resolve_layer,
)

__all__ = [
    "Estimate", "HsicTest", "MiPeaksConfig", "MiPeaksResult", "MiProblemSet", "ModelMiSummary",
    "PeakStats", "StrategyEnrichment", "Trajectory", "average_outlier_magnitude", "ban_tokens",
    "bootstrap_mean", "collect_trajectories", "compute_mi", "decode_states", "estimate_mi",
    "find_peaks", "find_peaks_iqr", "find_peaks_topk", "greedy_trajectories", "hsic_gaussian",
    "hsic_paper", "hsic_permutation_test", "label_trajectories", "organism_problem_set",
    "paired_difference", "peak_stats", "planted_dependence_control", "peak_token_suppression", "resolve_layer", "run_mi_peaks",
    "strategy_enrichment", "summarise_model", "thinking_token_scaling",
]
