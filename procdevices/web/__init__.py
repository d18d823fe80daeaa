"""``procdevices web``: a live picture of a running topology in the browser, served by a
process of its own that is only a client of the supervisor (docs/web.md).

- ``command``: the command's options and its start;
- ``server``: aiohttp: the page, its static files, the JSON API, server-sent events;
- ``security``: token, Host, read-only and cross-site rules, as pure decisions;
- ``link``: the supervisor's status (polled) and event stream (followed), as one snapshot;
- ``graph``: status + the topology's sockets → devices, edges, anonymous peers (pure);
- ``history``: recent rates for the sparklines;
- ``static/``: the page (HTML, CSS, vanilla JS drawing the graph in SVG); nothing is loaded
  from elsewhere.
"""
