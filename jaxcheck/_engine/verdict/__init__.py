"""The verdict: opinions per entry, tolerances, kinks, and each leaf's status and sentence.

``classify`` holds the status table and the tolerances; ``evidence`` gathers the opinions of
every probed entry and refines the uncertain ones; ``kinks`` tests subgradients jointly;
``sentences`` writes a leaf's facts and message into a ``LeafReport``.
"""
