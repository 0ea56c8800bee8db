"""The FHIR R4 read API (FastAPI) over the shared care record."""
