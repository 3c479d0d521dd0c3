"""Model inputs on the host: :class:`VeloData` (observations, per-cell size factors and batch codes).

The lowest layer of the package's data flow: the model, the training loop and the posterior queries all
take a :class:`VeloData`; it imports nothing from velopyro.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["VeloData"]


@dataclass
class VeloData:
    """Model inputs on the host: observations, per-cell size factors and batch codes.

    Attributes
    ----------
    u, s
        Unspliced and spliced, ``(N, G)`` float32.
    size_factor_u, size_factor_s
        ``(N, 1)`` float32 (ones for the Normal likelihood).
    batch_index
        ``(N, K)`` int64 codes of the K categorical covariates (:mod:`velopyro.covariates`), or None
        without covariates (then :meth:`batch` hands out ``(B, 0)`` codes).
    """

    u: torch.Tensor
    s: torch.Tensor
    size_factor_u: torch.Tensor
    size_factor_s: torch.Tensor
    batch_index: torch.Tensor | None = None

    @property
    def n_cells(self) -> int:
        """Number of cells N."""
        return self.u.shape[0]

    def batch(self, idx: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, ...]:
        """The model's positional arguments for the cells ``idx`` on ``device``.

        Parameters
        ----------
        idx
            Cell indices (on the host).
        device
            Target device.

        Returns
        -------
        tuple of torch.Tensor
            ``(idx, u, s, size_factor_u, size_factor_s, batch_index)``; ``batch_index`` is ``(B, K)`` int64,
            ``(B, 0)`` without covariates (always a tensor, so the tuple has one length and JIT can trace it).
        """
        nb = device.type != "cpu"
        codes = (self.batch_index[idx] if self.batch_index is not None
                 else torch.zeros((len(idx), 0), dtype=torch.int64))
        return tuple(t.to(device, non_blocking=nb) for t in
                     (idx, self.u[idx], self.s[idx], self.size_factor_u[idx], self.size_factor_s[idx], codes))

    def to(self, device: torch.device) -> VeloData:
        """Return a copy with every tensor on ``device`` (``preload``).

        Parameters
        ----------
        device
            Target device.

        Returns
        -------
        VeloData
            The moved data.
        """
        moved = VeloData(*(t.to(device) for t in (self.u, self.s, self.size_factor_u, self.size_factor_s)))
        if self.batch_index is not None:
            moved.batch_index = self.batch_index.to(device)
        return moved
