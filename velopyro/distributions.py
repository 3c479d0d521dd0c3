"""Distributions of the model and the guide, written for the shapes the enumerated ELBO produces.

torch's distributions broadcast every parameter to the full batch shape before an elementwise special
function: a Normal whose scale is per gene and state, ``(4, 1, G)``, takes ``log(scale)`` over
``(4, B, G)`` entries, and the Dirichlet prior of pi (one concentration, expanded over cells and genes by
the plates) evaluates ``lgamma`` ``4 B G`` times. The classes here compute the same densities but
evaluate such terms on the parameters' distinct values only (:func:`compact`), then broadcast. They are
drop-in subclasses of Pyro's distributions (same constructor, ``expand``, ``rsample``, support).

- :class:`Normal`: the Normal likelihood of eq. 20-21.
- :class:`Poisson`, :class:`NegativeBinomial`: the count likelihoods. Under enumeration the rate has the
  state axis, ``(4, B, G)``, but the data-only terms (``lgamma(x + 1)``; for the negative binomial also
  ``lgamma(theta + x)`` and ``lgamma(theta)``, which do not depend on the state) are evaluated once on
  ``(B, G)`` and broadcast, where torch evaluates them on all ``4 B G`` entries.
- :class:`Dirichlet`: the prior of eq. 14.
- :class:`SafeDirichlet`: q(pi | z) of eq. 22, draws floored at :data:`PI_FLOOR`.
- :class:`LogisticNormal`: the cheaper reparameterised q(pi | z): ``pi = softmax(y, 0)`` with
  ``y ~ Normal(loc, scale)`` in ``K - 1`` dimensions (Aitchison's additive logistic normal). Its
  log-density reuses the Gaussian draw behind each sample instead of inverting the map.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import pyro.distributions as dist
import torch
from torch.distributions import constraints

__all__ = ["PI_FLOOR", "compact", "Normal", "Poisson", "NegativeBinomial", "Dirichlet", "SafeDirichlet",
           "LogisticNormal", "parallel_dirichlet"]

# Draws of pi are kept at or above this floor. A Gamma(a) variate with a small concentration underflows to
# exactly 0 in float32 (probability ~0.4 for a = 0.01), and log(0) makes the Monte Carlo KL of pi
# (log p(pi) - log q(pi), both Dirichlet-type densities) inf - inf = NaN. The floor moves at most 4e-30 of
# probability mass, far below float32 resolution of the simplex.
PI_FLOOR = 1e-30

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def compact(t: torch.Tensor) -> torch.Tensor:
    """A view of ``t`` without its broadcast (stride-0) dimensions, which become size 1.

    An expanded tensor holds the same value along every stride-0 dimension, so an elementwise function of
    the compact view, broadcast back, equals the function of the full tensor at a fraction of the cost.

    Parameters
    ----------
    t
        Any tensor (typically an expanded parameter).

    Returns
    -------
    torch.Tensor
        ``t`` itself when nothing is broadcast, otherwise a view that broadcasts to ``t.shape``.
    """
    if all(st != 0 or n == 1 for st, n in zip(t.stride(), t.shape, strict=True)):
        return t
    pairs = zip(t.stride(), t.shape, strict=True)
    return t[tuple(slice(0, 1) if st == 0 and n > 1 else slice(None) for st, n in pairs)]


class Normal(dist.Normal):
    """``pyro.distributions.Normal`` whose ``log_prob`` takes ``log(scale)`` on the scale's distinct values."""

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """Log-density, as ``torch.distributions.Normal.log_prob``.

        Parameters
        ----------
        value
            Points to score; broadcasts against the batch shape.

        Returns
        -------
        torch.Tensor
            ``-(x - loc)^2 / (2 scale^2) - log(scale) - log(2 pi) / 2``.
        """
        scale = compact(self.scale)
        return -0.5 * ((value - self.loc) / scale) ** 2 - (scale.log() + _HALF_LOG_2PI)


class Poisson(dist.Poisson):
    """``pyro.distributions.Poisson`` whose ``log_prob`` evaluates ``lgamma(x + 1)`` on the data's shape only."""

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """Log-mass, as ``torch.distributions.Poisson.log_prob``.

        Parameters
        ----------
        value
            Counts; broadcast against the batch shape (e.g. ``(B, G)`` against ``(4, B, G)``).

        Returns
        -------
        torch.Tensor
            ``x log(rate) - rate - lgamma(x + 1)``.
        """
        return torch.xlogy(value, self.rate) - self.rate - torch.lgamma(value + 1.0)


class NegativeBinomial(dist.NegativeBinomial):
    """``pyro.distributions.NegativeBinomial`` (``total_count`` and ``logits``) with a leaner ``log_prob``.

    The normaliser ``lgamma(r + x) - lgamma(x + 1) - lgamma(r)`` is computed on the distinct values of
    ``r`` (:func:`compact`) and ``x``, and one ``logsigmoid`` is taken instead of two:
    ``log p = r logsigmoid(-l) + x logsigmoid(l) = (r + x) logsigmoid(-l) + x l``.
    """

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """Log-mass, as ``torch.distributions.NegativeBinomial.log_prob``.

        Parameters
        ----------
        value
            Counts; broadcast against the batch shape.

        Returns
        -------
        torch.Tensor
            ``lgamma(r + x) - lgamma(x + 1) - lgamma(r) + r logsigmoid(-l) + x logsigmoid(l)``.
        """
        r = compact(self.total_count)
        rx = r + value
        log_norm = torch.lgamma(rx) - torch.lgamma(value + 1.0) - torch.lgamma(r)
        log_norm = log_norm.masked_fill(rx == 0.0, 0.0)  # r = x = 0 has probability 1, as torch
        return rx * torch.nn.functional.logsigmoid(-self.logits) + value * self.logits + log_norm


class Dirichlet(dist.Dirichlet):
    """``pyro.distributions.Dirichlet`` whose normaliser is computed on the concentration's distinct values."""

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """Log-density, as ``torch.distributions.Dirichlet.log_prob``.

        Parameters
        ----------
        value
            Points on the simplex, ``(..., K)``.

        Returns
        -------
        torch.Tensor
            ``sum_k (c_k - 1) log x_k + lgamma(sum_k c_k) - sum_k lgamma(c_k)``.
        """
        conc = compact(self.concentration)
        log_norm = torch.lgamma(conc.sum(-1)) - torch.lgamma(conc).sum(-1)
        return torch.xlogy(conc - 1.0, value).sum(-1) + log_norm


_POOL: ThreadPoolExecutor | None = None
_MIN_PARALLEL = 1 << 15  # entries below which one thread is faster than handing work out
#: Rows (draws of one K-vector) per block of the CPU sampler. Each block draws from its own generator, so
#: the blocks and their seeds depend on the shape only, never on the number of threads.
BLOCK_ROWS = 1 << 13


def _thread_pool(n: int) -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None or _POOL._max_workers != n:
        _POOL = ThreadPoolExecutor(max_workers=n, thread_name_prefix="velopyro-dirichlet")
    return _POOL


@torch.library.custom_op("velopyro::parallel_dirichlet", mutates_args=(), device_types="cpu")
def parallel_dirichlet(concentration: torch.Tensor, n_threads: int) -> torch.Tensor:
    """torch's reparameterised Dirichlet draw on CPU, in blocks of :data:`BLOCK_ROWS` rows over ``n_threads``.

    The forward pass is ``torch._sample_dirichlet`` and the backward pass torch's implicit gradient
    ``torch._dirichlet_grad``, each run on row blocks in a thread pool: torch runs both kernels on one
    thread, and its sampler holds the global generator's lock throughout, so each block gets its own
    ``torch.Generator``, seeded from one draw of the global one per block (a seed still fixes the draws).
    The blocks are fixed by the shape, not by ``n_threads``: the same seed gives the same draw with 1 or
    16 threads. It is a registered torch operator (``torch.ops.velopyro.parallel_dirichlet``) rather than
    an ``autograd.Function`` so that ``torch.jit.trace`` (``fit(jit=True)``) records it as one node and
    replays it, threads included.

    Parameters
    ----------
    concentration
        ``(..., K)`` positive concentrations.
    n_threads
        Threads that work through the blocks (1: in this thread).

    Returns
    -------
    torch.Tensor
        A draw of the same shape.
    """
    k = concentration.shape[-1]
    n_blocks = max(1, -(-concentration.numel() // k // BLOCK_ROWS))
    seeds = torch.randint(0, 2**62, (n_blocks,)).tolist()

    def draw(i: int, c: torch.Tensor) -> torch.Tensor:  # block i always draws with seeds[i]
        return torch._sample_dirichlet(c, generator=torch.Generator().manual_seed(seeds[i]))

    return _map_rows(draw, n_threads, concentration)


@parallel_dirichlet.register_fake
def _(concentration: torch.Tensor, n_threads: int) -> torch.Tensor:
    return torch.empty_like(concentration, memory_format=torch.contiguous_format)


def _parallel_dirichlet_setup(ctx, inputs: tuple, output: torch.Tensor) -> None:
    ctx.save_for_backward(output, inputs[0])
    ctx.n_threads = inputs[1]


def _parallel_dirichlet_backward(ctx, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:
    x, concentration = ctx.saved_tensors
    total = concentration.sum(-1, True).expand_as(concentration)
    g = _map_rows(lambda _, *b: torch._dirichlet_grad(*b), ctx.n_threads, x, concentration, total)
    return g * (grad_output - (x * grad_output).sum(-1, True)), None


parallel_dirichlet.register_autograd(_parallel_dirichlet_backward, setup_context=_parallel_dirichlet_setup)


def _map_rows(fn, n_threads: int, *tensors: torch.Tensor) -> torch.Tensor:
    """``fn(i, *blocks_i)`` on the blocks of :data:`BLOCK_ROWS` rows (rows: all but the last axis), on
    ``n_threads`` threads, concatenated."""
    k = tensors[0].shape[-1]
    blocks = list(zip(*(t.reshape(-1, k).split(BLOCK_ROWS) for t in tensors), strict=True))
    if n_threads < 2 or len(blocks) < 2:
        parts = [fn(i, *b) for i, b in enumerate(blocks)]
    else:
        parts = list(_thread_pool(n_threads).map(lambda i: fn(i, *blocks[i]), range(len(blocks))))
    return torch.cat(parts).view(tensors[0].shape)


class SafeDirichlet(dist.Dirichlet):
    """Dirichlet whose reparameterised draws are floored at :data:`PI_FLOOR` and, on CPU, drawn (and
    differentiated) in fixed row blocks on all of torch's threads (see :func:`parallel_dirichlet`)."""

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:  # noqa: B008
        """Reparameterised draw, floored at :data:`PI_FLOOR`.

        Parameters
        ----------
        sample_shape
            Extra leading shape.

        Returns
        -------
        torch.Tensor
            Points on the simplex.
        """
        conc = self.concentration.expand(self._extended_shape(sample_shape))
        # on CPU the path depends on the size only (not on the thread count), so a seed fixes the draw
        if conc.device.type != "cpu" or conc.numel() < _MIN_PARALLEL:
            return super().rsample(sample_shape).clamp_min(PI_FLOOR)
        return parallel_dirichlet(conc, torch.get_num_threads()).clamp_min(PI_FLOOR)


class LogisticNormal(dist.TorchDistribution):
    """Additive logistic normal on the simplex: ``pi = softmax(y_1, ..., y_{K-1}, 0)``, ``y ~ Normal(loc, scale)``.

    The density with respect to Lebesgue measure on the first ``K - 1`` coordinates is
    ``N(alr(pi); loc, scale) / prod_k pi_k`` with ``alr(pi)_j = log(pi_j / pi_K)``. Draws are floored at
    :data:`PI_FLOOR`; the Gaussian variate behind the latest draw is kept, so scoring that draw (what SVI
    does) needs no logarithm of the simplex point.

    Parameters
    ----------
    loc, scale
        ``(..., K - 1)`` parameters of the Gaussian.
    validate_args
        As for torch distributions.
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.simplex
    has_rsample = True

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor, validate_args: bool | None = None) -> None:
        self.loc, self.scale = loc, scale
        shape = torch.broadcast_shapes(loc.shape, scale.shape)
        self._last: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        super().__init__(shape[:-1], torch.Size([shape[-1] + 1]), validate_args=validate_args)

    def expand(self, batch_shape: torch.Size, _instance: LogisticNormal | None = None) -> LogisticNormal:
        """Expand the batch shape (see ``torch.distributions.Distribution.expand``).

        Parameters
        ----------
        batch_shape
            The new batch shape.
        _instance
            Internal.

        Returns
        -------
        LogisticNormal
            The expanded distribution.
        """
        batch_shape = torch.Size(batch_shape)
        return type(self)(self.loc.expand(batch_shape + self.loc.shape[-1:]),
                          self.scale.expand(batch_shape + self.scale.shape[-1:]), validate_args=False)

    @property
    def mean(self) -> torch.Tensor:
        """Not available in closed form."""
        raise NotImplementedError("The logistic normal's mean has no closed form; average draws instead.")

    @staticmethod
    def _log_softmax(y: torch.Tensor) -> torch.Tensor:
        """``log softmax(y_1, ..., y_{K-1}, 0)``, written out: torch's softmax is slow for K = 4 on CPU."""
        logits = torch.cat([y, y.new_zeros(y.shape[:-1] + (1,))], dim=-1)
        m = logits.detach().amax(-1, keepdim=True)
        shifted = logits - m
        return shifted - shifted.exp().sum(-1, keepdim=True).log()

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:  # noqa: B008
        """Reparameterised draw.

        Parameters
        ----------
        sample_shape
            Extra leading shape.

        Returns
        -------
        torch.Tensor
            Points on the simplex, ``sample_shape + batch_shape + (K,)``.
        """
        shape = torch.Size(sample_shape) + self.batch_shape + (self.event_shape[0] - 1,)
        eps = torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)
        log_pi = self._log_softmax(self.loc + self.scale * eps)
        pi = log_pi.exp().clamp_min(PI_FLOOR)
        self._last = (pi, eps, log_pi)
        return pi

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """Log-density ``sum_j log N(y_j; loc_j, scale_j) - sum_k log pi_k`` with ``y = alr(pi)``.

        Parameters
        ----------
        value
            Points on the simplex, ``(..., K)``.

        Returns
        -------
        torch.Tensor
            Shape ``value.shape[:-1]`` broadcast with the batch shape.
        """
        k1 = self.event_shape[0] - 1
        if self._last is not None and value is self._last[0]:
            # scoring the latest draw: (y - loc) / scale is the standard normal variate eps behind it, as a
            # function of the parameters too (y = loc + scale eps), so this is the same function and gradient
            _, eps, log_pi = self._last
            sq = eps.square().sum(-1)
        else:
            log_pi = value.clamp_min(PI_FLOOR).log()
            y = log_pi[..., :-1] - log_pi[..., -1:]
            sq = ((y - self.loc) / self.scale).square().sum(-1)
        log_scale = self.scale.log().sum(-1) * (k1 / self.scale.shape[-1])  # a shared scale counts K - 1 times
        return -0.5 * sq - log_scale - log_pi.sum(-1) - k1 * _HALF_LOG_2PI
