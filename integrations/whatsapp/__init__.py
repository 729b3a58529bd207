"""WhatsApp Cloud API: message builders, the Graph client, webhook parsing and intake."""
