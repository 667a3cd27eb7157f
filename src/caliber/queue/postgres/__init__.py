"""The team queue on a PostgreSQL server: chosen by a ``postgresql://`` URL (``select``),
opened by ``backend`` (psycopg 3, the ``postgres`` extra)."""
