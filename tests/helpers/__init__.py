"""Shared test machinery: databases, statement counting, verify_action."""
