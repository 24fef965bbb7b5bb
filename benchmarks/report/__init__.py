"""What is built from stored results only: ``results.csv`` and ``tables.md`` (``tables``), the figures, the
matched-bits comparison (``paired``) and a reproduction against reference runs (``compare``)."""
