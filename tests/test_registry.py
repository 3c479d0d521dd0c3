"""Components by registered name: the torch-free list of built-in names, save/load by name."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from velopyro import VeloPyro, guide, likelihoods
from velopyro._registry import COMPONENTS, check_registered
from velopyro._validation import VelopyroInputError
from velopyro.datasets import simulate


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_builtin_names_are_the_registries():
    assert {"likelihood", "state_coupling", "pi_guide"} <= {c.option for c in COMPONENTS}
    for c in COMPONENTS:
        assert tuple(c.registered()) == c.builtin, c.option


class Laplace(likelihoods.Normal):
    """A registered custom likelihood: Laplace noise instead of Normal."""

    name = "test_laplace_noise"

    def dist(self, mean, state, modality, size_factor=None):
        import pyro.distributions as dist

        return dist.Laplace(mean, self.state_scale[state] * self.sigma(modality))


class SmallerGuide(guide.VeloVIGuide):
    """A registered custom guide (the Dirichlet guide with a narrower network)."""

    def __init__(self, n_genes, n_latent, likelihood, n_hidden=256, n_layers=1, dropout_rate=0.1):
        super().__init__(n_genes, n_latent, likelihood, "dirichlet", n_hidden=16, n_layers=1, dropout_rate=0.0)


@pytest.fixture()
def registered():
    likelihoods.register_likelihood(Laplace)
    guide.register_guide("test_smaller", SmallerGuide)
    yield
    likelihoods.LIKELIHOODS.pop(Laplace.name, None)
    guide.GUIDES.pop("test_smaller", None)


def test_save_load_restores_custom_components_by_name_and_refuses_unknown_ones(registered, tmp_path):
    adata = simulate(100, 6, seed=0)
    m = VeloPyro(adata, likelihood=Laplace.name, pi_guide="test_smaller", state_coupling="shared")
    with pytest.warns(UserWarning, match="max_epochs"):
        m.fit(max_epochs=2, batch_size=50, progress_bar=False)
    m.save(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())["config"]
    assert (cfg["likelihood"], cfg["pi_guide"], cfg["state_coupling"]) == (Laplace.name, "test_smaller", "shared")
    loaded = VeloPyro.load(tmp_path / "m", adata)
    assert type(loaded.likelihood) is Laplace and type(loaded.guide) is SmallerGuide
    np.testing.assert_array_equal(loaded.get_velocity(n_samples=2), m.get_velocity(n_samples=2))
    # a session without the custom guide: one clear line naming it
    guide.GUIDES.pop("test_smaller")
    with pytest.raises(VelopyroInputError, match=r"pi_guide 'test_smaller'.*not registered.*register_guide") as err:
        VeloPyro.load(tmp_path / "m", adata)
    assert "\n" not in str(err.value)
    guide.register_guide("test_smaller", SmallerGuide)
    likelihoods.LIKELIHOODS.pop(Laplace.name)
    with pytest.raises(VelopyroInputError, match=r"likelihood 'test_laplace_noise'.*register_likelihood"):
        VeloPyro.load(tmp_path / "m", adata)
    # ... unless the instance is passed
    again = VeloPyro.load(tmp_path / "m", adata, likelihood=Laplace())
    np.testing.assert_array_equal(again.get_velocity(n_samples=2), m.get_velocity(n_samples=2))


def test_unknown_state_coupling_in_a_saved_config_is_refused():
    with pytest.raises(VelopyroInputError, match=r"state_coupling 'tied'.*registered: independent, shared"):
        check_registered({"state_coupling": "tied", "likelihood": "normal"}, "the model saved in 'm'")
    check_registered({"state_coupling": "tied"}, "x", skip=("state_coupling",))  # skipped: no error
