"""Contracts only: the CloudEvent envelope, event types, topics. Imports nothing of CareHub's."""
