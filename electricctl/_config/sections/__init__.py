"""One validator per section of electric.yaml, each reporting into a shared DiagnosticSink.

Every validator takes the section's schema-valid data and returns the model objects for the
declarations that are valid; a declaration with a problem is reported and left out.
"""
