"""Conversation flows: documents, the pure engine, sessions and the flow jobs."""
