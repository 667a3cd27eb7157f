"""The SQL core the SQL queues share (SQLite, PostgreSQL): every verb written once against a
small dialect (``core``), the rows as Workloads, summaries and Results (``rows``) and the
table of what refers to each blob (``refs``). Each backend supplies only its connection,
placeholders, claim and expiry statements, locking and its content store."""
