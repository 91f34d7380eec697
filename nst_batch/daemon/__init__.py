"""`nst-batch serve`: the pipeline, in the order data flows through it.

- ``watcher`` sees inbox files complete; ``inbox`` turns names into submissions (pure);
- ``intake`` claims them (``claims`` moves the files, ``folders`` says where) into the ``store``;
- ``dispatch`` offers queued runs to the ``scheduler`` (pure admission), sized by ``capacity``
  from the ``memory`` model (pure) and what ``measure`` measured;
- ``workers`` run admitted work on threads through the ``runner`` (``checkpoint`` on the way);
- ``finishing`` records each outcome and publishes complete jobs through ``results``;
- ``service`` is the loop: signals, the systemd watchdog (``systemd``), the intake thread.

``estimate`` answers `nst-batch estimate` from the same memory model.
"""
