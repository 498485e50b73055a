"""Distillation: a teacher canonicalizer scores the same crop at its own input size, and the student learns from its
probabilities as well as from the prior (Hinton et al., 2015), e.g. the paper's network at 128 px teaching the same
network at 64 px. It plugs into :func:`canon.train.train` as an :class:`~canon.train.Objective`."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..canonicalizer import Canonicalizer, Preprocessing


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, averaged over the batch (``B x n`` logits)."""
    return F.kl_div(F.log_softmax(student_logits / temperature, dim=1), F.log_softmax(teacher_logits / temperature,
                    dim=1), reduction="batchmean", log_target=True) * temperature ** 2


@dataclass(frozen=True)
class Distillation:
    """The loss ``(1 - weight) * prior + weight * distillation_loss(student, teacher, temperature)``; the teacher
    scores the crop rendered with its own preprocessing, in its policy's first-pass arithmetic."""

    teacher: Canonicalizer
    weight: float = 0.5
    temperature: float = 2.0

    def __post_init__(self):
        if not 0 <= self.weight <= 1:
            raise ValueError(f"the distillation weight takes 0 to 1, not {self.weight}")

    @property
    def preprocessings(self) -> tuple[Preprocessing, ...]:
        return (self.teacher.preprocessing,)

    def loss(self, prior: torch.Tensor, logits: torch.Tensor, extra: list[torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():
            targets = self.teacher.network(extra[0], self.teacher.arithmetic)
        return (1 - self.weight) * prior + self.weight * distillation_loss(logits, targets, self.temperature)
