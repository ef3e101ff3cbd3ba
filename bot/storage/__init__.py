"""Storage: the SQL engine, the one schema (audit and state tables) and its Alembic
migrations, the shared state database. Above the kernel, below everything that keeps rows.
"""
