"""The doors: the public checks, each a thin front over the same stages.

``gradient`` (``check``, ``assert_gradients``), ``layer``, ``object`` and ``rule``
(``check_rule``, ``assert_rule``) prepare a system and run ``pipeline``, which strings plan →
evaluate → verdict → report together; ``product`` (``check_hvp``, ``assert_hvp``) runs any
product specification of :mod:`jaxcheck._engine.evaluate.products` (a new product door is one
``ProductSpec`` and a front calling ``check_product``); ``sweep`` draws the step-size curve.
"""
