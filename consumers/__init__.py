"""Consumers: Kafka -> record, dead-letter store (and later sharing, coordination, ledger, KPIs)."""
