"""The one error of the metrics server that `up` must know before any metrics are served.

Its own module so that catching it does not import metrics.py: that module brings
prometheus_client, http.server and wsgiref (~80-100 ms of CPU), which `up` pays only when a
metrics server is configured (``metrics``, ``--metrics``, ``metrics_socket``).
"""

from __future__ import annotations


class MetricsUnavailable(Exception):
    """The metrics address cannot be served (in use, not an address of this host)."""
