"""electricctl's Python client. For now: a Satellite protocol client used by the tests."""
