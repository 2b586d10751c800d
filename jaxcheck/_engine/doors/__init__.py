"""The doors: the public checks, each a thin front over the same stages.

``gradient`` (``check``, ``assert_gradients``), ``layer``, ``object``, ``product``
(``check_hvp``) and ``rule`` prepare a system and run ``pipeline``, which strings plan →
evaluate → verdict → report together; ``sweep`` draws the step-size curve.
"""
