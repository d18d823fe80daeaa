"""Several hosts, one topology (docs/multihost.md): the keys of the cluster control plane
(``keys``), a host's CURVE-secured control endpoint (``control``) and the clients that reach
other hosts through it (``remote``). The topology side is ``supervisor/config/hosts.py``."""
