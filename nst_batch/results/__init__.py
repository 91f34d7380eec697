"""What people look at in the morning, written into the outbox.

- ``result``: one run's files (image with its settings, loss log, GIF, plots, run summary);
- ``report``: ``job.json``, the typed job report, and the states of jobs and runs;
- ``outbox``: publishing a job's folder into the outbox in one step;
- ``plots``: loss curves, compare and sweep sheets, thumbnails; ``gallery``: ``index.html``.

Below the daemon: these know files and pictures, never queues or threads.
"""
