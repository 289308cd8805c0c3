"""Stand-ins for the systems around the platform, for tests, demos, benchmarks and the local stack.

They are not part of the platform: no service imports them and the production image does not ship them.
``sistema_ts`` simulates Sistema TS (the 730 web services); ``cup`` generates the CUP's source data.
"""
