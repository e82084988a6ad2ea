"""Word count apps of other stream-processing frameworks, run against a flowbus broker (run_peers.py)."""
