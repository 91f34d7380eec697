"""What people configure, parsed and validated once, at the edge, into typed, frozen objects.

- ``config``: the daemon's config file (``Config``), with ``--set`` overrides;
- ``sidecar``: a job's YAML sidecar (``Sidecar``), its engine parameters over the config's;
- ``problems``: what is wrong with either, one plain line per problem;
- ``yamlfile``: reading YAML that may be hostile; ``check``: `nst-batch check FILE`;
- ``tuning``: the performance settings as the engine's ``Speed`` and the process's threads.

Above the engine: config and sidecars build the engine's ``StyleParams``.
"""
