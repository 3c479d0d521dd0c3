"""The swappable components of a velopyro model and their registries, listed without importing torch.

Each component (the likelihood, the state coupling, the guide, ...) is chosen by a registered name
(``VeloPyro(likelihood="poisson")``) from a registry in its own module (a dict from name to entry, filled
by that module's ``register_*`` function). :data:`COMPONENTS` lists them, one line each: the option and
configuration key, where the registry lives, how to register a new entry, and the names velopyro ships.

The built-in names are spelled here so that the command line can offer them without importing torch
(``velopyro fit --help`` stays fast); ``tests/test_registry.py`` checks that they are exactly what each
registry holds after import. A saved model records each component's name in its configuration, and
:func:`check_registered` refuses a name the session has not registered with a one-line error.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Component", "COMPONENTS", "component", "check_registered"]


@dataclass(frozen=True)
class Component:
    """One swappable component.

    Attributes
    ----------
    option
        The :class:`~velopyro.api.VeloPyro` option and configuration key holding the name.
    module
        Module of the registry.
    registry
        Name of the registry (a dict from name to entry) in ``module``.
    register
        Name of the function in ``module`` that registers a new entry.
    builtin
        The names velopyro ships, in the registry's order.
    """

    option: str
    module: str
    registry: str
    register: str
    builtin: tuple[str, ...]

    def registered(self) -> Mapping[str, Any]:
        """The registry itself (imports its module, and with it torch).

        Returns
        -------
        Mapping
            Name to entry, including names registered in this session.
        """
        return getattr(importlib.import_module(self.module), self.registry)


#: Every swappable component; adding one is one line.
COMPONENTS: tuple[Component, ...] = (
    Component("likelihood", "velopyro.likelihoods", "LIKELIHOODS", "register_likelihood",
              ("normal", "poisson", "negative_binomial")),
    Component("state_coupling", "velopyro.coupling", "STATE_COUPLINGS", "register_state_coupling",
              ("independent", "shared")),
    Component("pi_guide", "velopyro.guide", "GUIDES", "register_guide",
              ("dirichlet", "logistic_normal", "collapsed", "conditional")),
    Component("kinetics", "velopyro.kinetics", "KINETICS", "register_kinetics", ("constant", "time_dependent")),
)


def component(option: str) -> Component:
    """The component of an option name.

    Parameters
    ----------
    option
        E.g. ``"likelihood"``.

    Returns
    -------
    Component
        Its entry of :data:`COMPONENTS`.
    """
    for c in COMPONENTS:
        if c.option == option:
            return c
    raise KeyError(f"no component {option!r}; components: {[c.option for c in COMPONENTS]}")


def check_registered(config: Mapping[str, Any], what: str, skip: tuple[str, ...] = ()) -> None:
    """Refuse a configuration that names a component this session has not registered.

    Parameters
    ----------
    config
        A model configuration (option to name); options it lacks are not checked.
    what
        What the configuration belongs to, for the message (e.g. ``"the model saved in m/"``).
    skip
        Options not to check (e.g. a likelihood passed as an instance).

    Raises
    ------
    VelopyroInputError
        Naming the option, the unknown name, the registered names and how to register it.
    """
    from ._validation import VelopyroInputError  # not at import: the command line's --help reads this module

    for c in COMPONENTS:
        if c.option not in config or c.option in skip:
            continue
        name = config[c.option]
        known = c.registered()
        if name not in known:
            raise VelopyroInputError(
                f"{what} uses {c.option} {name!r}, which is not registered in this session (registered: "
                f"{', '.join(map(str, known))}); define it and register it with {c.module}.{c.register} first."
            )
