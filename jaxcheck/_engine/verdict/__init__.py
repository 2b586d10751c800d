"""The verdict: opinions per entry, tolerances, kinks, and each leaf's status and sentence.

``classify`` holds the status table, the tolerances and the one copy of each error formula
(rounding, tolerance excess); ``evidence`` gathers the opinions of every probed entry and
refines the uncertain ones; ``kinks`` tests subgradients jointly and returns its findings;
``status`` holds the per-leaf record and :func:`~jaxcheck._engine.verdict.status.decide`, the one
place a leaf's final status is decided (probe codes → joint kinks → rounding → declared);
``sentences`` writes a leaf's facts and message into a ``LeafReport``.
"""
