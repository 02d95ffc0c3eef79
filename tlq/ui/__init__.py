"""`tlq ui`: a web dashboard for the jobs, their curves and artifacts, and the workers, above ``tlq.client``.

The modules: ``app`` (``create_app``, the Starlette app), ``pages`` (the HTML pages), ``api`` (the JSON API and the
artifact files), ``security`` (token, CSRF, allowed hosts, artifact paths); ``templates/`` and ``static/`` (uPlot
included) ship inside the package, so the dashboard works offline.
"""
