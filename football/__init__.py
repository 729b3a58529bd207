"""Football data: models, APIFootball sync jobs (queue ``low``) and flow actions."""
