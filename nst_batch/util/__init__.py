"""Helpers every layer may use, and which use nothing of nst-batch: atomic writes
(``atomicio``), the errors users see (``errors``), reading and writing image files
(``imagefile``), names of files (``names``) and how values read in text (``text``)."""
