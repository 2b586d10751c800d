"""Evaluation: what to perturb and how to compute every perturbed point at once.

``plan`` chooses the probe groups and steps; ``finite_differences`` and ``programs`` build the
compiled programs (``incremental`` carries only what a perturbation changes); ``compile_cache``
keeps programs on disk (``cache_store``: its files; ``executables``: the bytes it keeps);
``processes`` splits a check over ``jax.distributed``; ``numpy_differences`` is the two-way path
without a twin; ``products`` holds the product specifications (Hessian, Gauss-Newton) and
evaluates their exact products along directions, with finite differences of the twin's gradient
where they are needed; ``eager`` evaluates small checks with NumPy instead of compiling them.
"""
