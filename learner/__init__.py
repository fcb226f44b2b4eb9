"""The learner: ELBO estimator, objectives (BGPO bound, ELBO ratio, diffu-GRPO), advantages and
`LearnerWorker` (micro-batches x MC samples, optimizer, gradient all-reduce). No Ray here."""

from learner.advantages import group_advantages
from learner.batch import TrainBatch, build_train_batch, pad_sequences
from learner.behaviour import BehaviourTerms, MaskSpec, behaviour_terms, sample_masks
from learner.config import DiffuGRPOConfig, LearnerConfig
from learner.elbo import draw_masks, elbo_terms, old_terms, stratified_mask_counts
from learner.objectives import (
    OBJECTIVES,
    Objective,
    bgpo_bound,
    clipped_bgpo_bound,
    diffu_grpo_objective,
    elbo_ratio_objective,
    get_objective,
)
from learner.worker import LearnerWorker

__all__ = [
    "OBJECTIVES",
    "BehaviourTerms",
    "MaskSpec",
    "behaviour_terms",
    "sample_masks",
    "DiffuGRPOConfig",
    "LearnerConfig",
    "LearnerWorker",
    "Objective",
    "TrainBatch",
    "bgpo_bound",
    "build_train_batch",
    "clipped_bgpo_bound",
    "diffu_grpo_objective",
    "draw_masks",
    "elbo_ratio_objective",
    "elbo_terms",
    "get_objective",
    "group_advantages",
    "old_terms",
    "pad_sequences",
    "stratified_mask_counts",
]
