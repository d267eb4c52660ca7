"""Strategy probes and steering vectors (RESEARCH.md section 1).

    labels       TokenSpan, ExampleLabels, organism_labels, labels_from_char_spans, RegexLabeler,
                 task_labeler
    datasets     ProbeDataset, build_dataset, split_examples, ExampleSplit
    linear_probe LinearProbe (scikit-learn estimator, all layers in one batched L-BFGS run)
    sweep        sweep_layers, sweep_strategies, transfer_probe, ProbeSweep, TransferResult
    vectors      StrategyVector, diff_of_means_vectors, probe_weight_vectors, random_vector_like,
                 vector_cosines, save_vectors, load_vectors
    attribution  attribute_layers, AttributionResult
    preexistence preexistence_test, PreexistenceResult
    steering     steering_curve, steering_experiment, compare_to_random, SteeringCurve, SteeringResult
    traces       sample_traces, Trace
"""

from probes.attribution import AttributionResult, attribute_layers
from probes.datasets import ExampleSplit, ProbeDataset, build_dataset, split_examples
from probes.labels import (
    ExampleLabels,
    RegexLabeler,
    TokenSpan,
    labels_from_char_spans,
    organism_labels,
    task_labeler,
)
from probes.linear_probe import LinearProbe
from probes.preexistence import PreexistenceResult, preexistence_test
from probes.steering import (
    SteeringComparison,
    SteeringCurve,
    SteeringResult,
    compare_to_random,
    steering_curve,
    steering_experiment,
)
from probes.sweep import ProbeSweep, TransferResult, sweep_layers, sweep_strategies, transfer_probe
from probes.traces import Trace, sample_traces
from probes.vectors import (
    StrategyVector,
    diff_of_means_vectors,
    load_vectors,
    probe_weight_vectors,
    random_vector_like,
    read_vectors_info,
    save_vectors,
    vector_cosines,
)

__all__ = [
    "AttributionResult",
    "ExampleLabels",
    "ExampleSplit",
    "LinearProbe",
    "PreexistenceResult",
    "ProbeDataset",
    "ProbeSweep",
    "RegexLabeler",
    "SteeringComparison",
    "SteeringCurve",
    "SteeringResult",
    "StrategyVector",
    "TokenSpan",
    "Trace",
    "TransferResult",
    "attribute_layers",
    "build_dataset",
    "compare_to_random",
    "diff_of_means_vectors",
    "labels_from_char_spans",
    "load_vectors",
    "read_vectors_info",
    "organism_labels",
    "preexistence_test",
    "probe_weight_vectors",
    "random_vector_like",
    "sample_traces",
    "save_vectors",
    "split_examples",
    "steering_curve",
    "steering_experiment",
    "sweep_layers",
    "sweep_strategies",
    "task_labeler",
    "transfer_probe",
    "vector_cosines",
]
