"""The CRM: one-way layers, from the bottom up.

    crm.base     config, database, models, enums, Redis keys, locks, logs, metrics
    crm.replies  the reply runtime: intake, wake, serving a contact, turns, sessions, delivery
    crm.app      the application shell: factory, webhook, operator API, worker, CLI

``flows`` (definition and pure engine) sits between ``crm.base`` and ``crm.replies``;
``football`` (a plugin) between ``crm.replies`` and ``crm.app``; ``integrations`` (pure
clients and parsers) under everything. See docs/architecture.md.
"""
