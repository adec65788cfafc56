"""Conversations: models, the chat consumer, reply generation and the chat UI."""
