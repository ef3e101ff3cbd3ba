"""Chat platform adapters, one package per platform (adapter, rendering, platform setup,
its rate limits and config section). An adapter translates between its platform and the
kernel's Message and Reply; no business rule lives here. Importing this package imports
no platform library.
"""
