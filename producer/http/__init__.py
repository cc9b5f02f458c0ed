"""``lcm-api``: the HTTP service in front of the fleet (FastAPI), on the records that the CLI
and the Python API read too. ``app.py`` builds the app; ``routes/`` has one router per
resource; ``deps.py`` the typed dependencies; ``settings.py`` its one settings class."""
