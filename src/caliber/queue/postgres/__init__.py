"""The team queue on a PostgreSQL server: chosen by a ``postgresql://`` URL (``select``),
opened by ``backend`` (the PostgreSQL dialect of :mod:`caliber.queue.sql.core`), with its
schema and migrations (``schema``), its content store in the database (``blobs``), prune
(``prune``) and reconnecting (``connection``). psycopg 3 is the ``postgres`` extra, imported
only by the backend's modules."""
