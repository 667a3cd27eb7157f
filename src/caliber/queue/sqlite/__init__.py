"""The local queue: one SQLite file (``backend``), its schema and migrations (``schema``), its
content store (``blobs``) and prune (``prune``)."""
