"""Destination adapters, one module each, found through the ``reconciler.destinations``
entry-point group. The engine (``reconciler``) never imports a module of this package by name
except :mod:`destinations.base` and :mod:`destinations.registry`."""
