"""The system under test: the user's cost and gradient at θ, their parameters, and the JAX twin.

``prepare`` validates the parameters (``params``), calls the user's code safely and as few times
as the check needs, traces the twin (``twin``) and returns a complete, frozen ``System``; the
layer door's adapter (``layer``) turns ``forward``/``backward`` into such a system.
"""
