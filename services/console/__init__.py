"""The operator console: the web way in (pages in Italian, a JSON API), with login, per-entity
access and an access log. See services/console/README.md."""
