"""Adapters: each organisation's own format in, FHIR events out."""
