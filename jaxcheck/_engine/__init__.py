"""The engine of jaxcheck, arranged by stage; private (the public names are in ``jaxcheck``).

A check flows through four folders in order: ``system`` (the user's cost and gradient, called
safely, and the JAX twin), ``evaluate`` (what to perturb, and the compiled programs that evaluate
every perturbed point at once), ``verdict`` (the opinions per entry, tolerances, kinks, the one
final-status decision and the sentences of a leaf report), and ``doors`` (``check``,
``check_layer``, ``check_object``, ``check_hvp``, ``check_rule``: thin fronts over the same stages).
"""
