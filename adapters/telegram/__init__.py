"""Telegram: the python-telegram-bot adapter (polling or webhook), HTML rendering, the
bot command list (setMyCommands).
"""
