"""Users, and later roles and API keys."""
