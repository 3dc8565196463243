"""Normalizing flows, built up from the change-of-variables formula.

A flow is a bijection ``x = f(z)`` from a simple base (latent) space to data space. With
``z = f^{-1}(x)``:

    log p_X(x) = log p_Z(z) + log|det J_{f^{-1}}(x)| = log p_Z(f^{-1}(x)) - log|det J_f(z)|

Given modules: :mod:`flows.base` (the :class:`~flows.base.Flow` interface, the base distribution)
and :mod:`flows.data` (toy data sets). Modules you write, in this order:
:mod:`flows.change_of_variables`, :mod:`flows.composition`, :mod:`flows.coupling`,
:mod:`flows.maf`, :mod:`flows.train`.
"""
