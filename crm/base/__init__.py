"""The base layer: configuration, database and models, enums, Redis keys, locks, logs, metrics.

Imports only ``integrations`` and libraries.
"""
