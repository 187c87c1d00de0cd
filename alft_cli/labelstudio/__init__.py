"""Label Studio, live: push a query's images as tasks, pull the answers back.

:mod:`.api` is the face of ``alft labelstudio`` (above :mod:`alft_cli.api`), :mod:`.rounds`
the project side (what is pending, what was pushed where), :mod:`.client` the server side on
label-studio-sdk. The file route (task files, exports) is :mod:`alft_cli.labels`.
"""
