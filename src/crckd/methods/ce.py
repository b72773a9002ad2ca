"""Baseline 1 of the paper: the student trained with class-weighted cross-entropy alone."""

from crckd.methods.base import Method
from crckd.methods.registry import register_method

register_method(
    "ce",
    summary="class-weighted cross-entropy, no teacher (also how a teacher is trained)",
    reference="Baseline 1 in Xing et al., MICCAI 2021",
)(Method)
