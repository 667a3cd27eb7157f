"""The remote queue on a Speckle project/model (``backend``): the specklepy seam (``adapter``),
the event log (``events``, ``log``), views and checkpoints, the content store (``blobs``),
Results objects (``objects``, ``results``) and prune (``prune``)."""
