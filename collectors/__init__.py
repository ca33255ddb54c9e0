"""One module per collector; each exports ``COLLECTOR`` (see agent/collector.py).

Modules whose names start with ``_`` are shared helpers, not collectors.
"""
