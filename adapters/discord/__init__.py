"""Discord: the discord.py adapter (slash commands, buttons), embeds, the explicit
command sync step.
"""
