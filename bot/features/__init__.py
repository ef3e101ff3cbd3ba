"""One package per feature, each holding its service, its storage and its config model.
Features do not import one another, except through the interfaces their ``__init__`` names.
"""
