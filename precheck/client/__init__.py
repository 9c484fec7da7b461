"""`precheck`: the client for CI jobs and terminals. It speaks HTTP only, never the server's code.

`cli.py` parses arguments and maps outcomes to exit codes, `api.py` makes the HTTP calls,
`follow.py` follows a run's stream and resumes it, `download.py` fetches and checks the results,
`output.py` writes for a terminal or for a plain log, `outcome.py` holds the exit codes.
"""
