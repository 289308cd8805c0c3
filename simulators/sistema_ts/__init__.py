"""A Sistema TS simulator over real HTTP: ``python -m simulators.sistema_ts --cert-out DIR [--port P]``."""
