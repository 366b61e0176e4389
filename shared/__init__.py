"""FIR's own package: everything both the API and the workers need (no web or queue code)."""
