"""Experiments above the library's face: oracle simulations (:mod:`.simulate`) and their
reports (:mod:`.report`), with :mod:`.api` as their entry points for the CLI.

They drive rounds only through the public functions of :mod:`alft_cli.api` (a simulated round
is a real round); nothing in the library imports this package.
"""
