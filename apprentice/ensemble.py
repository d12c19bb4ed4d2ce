"""Teacher ensembles: several frozen teachers as one (`Ensemble`), and the check that each member fits
the data (`check_members`).

Its own module: an ensemble is a teacher like any other to the `apprentice.distill.Distiller` and to
the teacher cache (`apprentice.data.teacher_cache`), which see only its mean logits.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from apprentice.errors import ApprenticeError
from apprentice.models import check_outputs

__all__ = ["Ensemble", "check_members"]


class Ensemble(nn.Module):
    """Several frozen teachers as one: logits ``z = Σᵢ wᵢ·zᵢ`` with ``Σᵢ wᵢ = 1`` (equal by default).

    The mean of the members' logits (not of their probabilities) is what a teacher cache stores and
    what the distillation terms soften, so a cached ensemble and a live one give the same targets.
    Ensembles of independently trained networks are more accurate than their members (Hansen &
    Salamon 1990; Lakshminarayanan et al. 2017), which is what a student gains from (Hinton et al.
    2015, sec. 1). The weights are a buffer: `apprentice.data.teacher_hash` of an ensemble changes
    with its members, their order and their weights.

    Example:
        >>> a, b = nn.Linear(2, 3), nn.Linear(2, 3)
        >>> x = torch.ones(1, 2)
        >>> torch.allclose(Ensemble([a, b], [3, 1])(x), 0.75 * a(x) + 0.25 * b(x))
        True
    """

    def __init__(self, members: Sequence[nn.Module], weights: Sequence[float] | None = None) -> None:
        super().__init__()
        if len(members) < 2:
            raise ApprenticeError(f"an ensemble needs two or more teachers, got {len(members)}")
        w = torch.ones(len(members)) if weights is None else torch.tensor([float(v) for v in weights])
        if w.numel() != len(members) or not bool(torch.isfinite(w).all() & (w > 0).all()):
            raise ApprenticeError(f"ensemble weights must be {len(members)} finite numbers > 0, got {w.tolist()}")
        self.members = nn.ModuleList(members)
        self.register_buffer("weights", w / w.sum())

    def forward(self, x: Tensor) -> Tensor:
        out = self.weights[0] * self.members[0](x)
        for w, member in zip(self.weights[1:], self.members[1:]):
            out = out + w * member(x)
        return out


def check_members(members: Sequence[nn.Module], *, channels: int, image_size: int, num_classes: int,
                  names: Sequence[str]) -> None:
    """Each teacher takes the data's ``channels``×``image_size``² images and predicts ``num_classes``.

    One zero image through each (in eval mode, no gradient): a teacher of other classes or other
    input channels is named before any view is cached or any student step is taken.

    Raises:
        ApprenticeError: naming the first teacher that does not fit, and how.
    """
    for name, member in zip(names, members):
        check_outputs(member, channels=channels, image_size=image_size, num_classes=num_classes,
                      what=f"teacher {name!r}")
