"""Clients for the outside world: WhatsApp Cloud API and the football data API."""
