"""State the bot keeps besides the audit trail: approval requests and delivered events."""
