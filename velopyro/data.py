"""Model inputs on the host: :class:`VeloData` (observations and per-cell size factors).

The lowest layer of the package's data flow: the model, the training loop and the posterior queries all
take a :class:`VeloData`; it imports nothing from velopyro.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["VeloData"]


@dataclass
class VeloData:
    """Model inputs on the host: observations and per-cell size factors.

    Attributes
    ----------
    u, s
        Unspliced and spliced, ``(N, G)`` float32.
    size_factor_u, size_factor_s
        ``(N, 1)`` float32 (ones for the Normal likelihood).
    """

    u: torch.Tensor
    s: torch.Tensor
    size_factor_u: torch.Tensor
    size_factor_s: torch.Tensor

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
            ``(idx, u, s, size_factor_u, size_factor_s)``.
        """
        nb = device.type != "cpu"
        return tuple(t.to(device, non_blocking=nb) for t in
                     (idx, self.u[idx], self.s[idx], self.size_factor_u[idx], self.size_factor_s[idx]))

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
        return VeloData(*(t.to(device) for t in (self.u, self.s, self.size_factor_u, self.size_factor_s)))
