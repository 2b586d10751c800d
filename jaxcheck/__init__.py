"""jaxcheck: is your hand-written backpropagation right, and if not, exactly where is it wrong?

Three opinions of dJ/dθ — your NumPy backprop, finite differences of a JAX twin of your cost
(vmapped over every perturbed parameter vector), and ``jax.grad`` of the twin — compared per
parameter, with a verdict that says who is wrong.
"""

import sys

# `python -m jaxcheck` puts the current directory first on sys.path, then imports this package
# (numpy and jax with it) before jaxcheck/__main__.py runs: a random.py or copy.py there would
# replace the standard module inside numpy. sys.argv[0] is "-m" only while -m looks for its
# module, so only then is that directory moved after the standard library, where it stays
# importable (`jaxcheck check model:cost`) but shadows nothing. `import jaxcheck` leaves
# sys.path alone.
if sys.argv[:1] == ["-m"] and sys.path:
    _first = sys.path.pop(0)  # off the path while sysconfig imports what it needs
    import os
    import sysconfig

    if _first in ("", os.getcwd()):
        _stdlib = tuple(
            os.path.join(os.path.realpath(sysconfig.get_path(key)), "")
            for key in ("stdlib", "platstdlib")
        )
        _found = [
            i  # the entry is a stdlib directory, or inside one (lib-dynload), but not site-packages
            for i, entry in enumerate(sys.path)
            if "-packages" not in entry
            and os.path.join(os.path.realpath(entry or os.curdir), "").startswith(_stdlib)
        ]
        sys.path.insert(_found[-1] + 1 if _found else len(sys.path), _first)
        del _stdlib, _found
    else:
        sys.path.insert(0, _first)
    del _first, os, sysconfig

from jaxcheck._engine.doors.gradient import assert_gradients as assert_gradients
from jaxcheck._engine.doors.gradient import check as check
from jaxcheck._engine.doors.layer import assert_layer as assert_layer
from jaxcheck._engine.doors.layer import check_layer as check_layer
from jaxcheck._engine.doors.object import assert_object as assert_object
from jaxcheck._engine.doors.object import check_object as check_object
from jaxcheck._engine.doors.product import assert_hvp as assert_hvp
from jaxcheck._engine.doors.product import check_hvp as check_hvp
from jaxcheck._engine.doors.product_report import HvpReport as HvpReport
from jaxcheck._engine.doors.rule import assert_rule as assert_rule
from jaxcheck._engine.doors.rule import check_rule as check_rule
from jaxcheck._engine.doors.rule_report import RuleReport as RuleReport
from jaxcheck._engine.doors.sweep import StepSweep as StepSweep
from jaxcheck._engine.doors.sweep import step_sweep as step_sweep
from jaxcheck._engine.verdict.classify import Status as Status
from jaxcheck.errors import GradientError as GradientError
from jaxcheck.errors import InputError as InputError
from jaxcheck.errors import JaxcheckError as JaxcheckError
from jaxcheck.errors import MissingDependencyError as MissingDependencyError
from jaxcheck.errors import NondeterminismError as NondeterminismError
from jaxcheck.errors import PortError as PortError
from jaxcheck.errors import PortWarning as PortWarning
from jaxcheck.errors import ReimplementationError as ReimplementationError
from jaxcheck.errors import UserCodeError as UserCodeError
from jaxcheck.port import port as port
from jaxcheck.report import LeafReport as LeafReport
from jaxcheck.report import Report as Report

__version__ = "0.1.0"

__all__ = [
    "GradientError",
    "HvpReport",
    "InputError",
    "JaxcheckError",
    "LeafReport",
    "MissingDependencyError",
    "NondeterminismError",
    "PortError",
    "PortWarning",
    "ReimplementationError",
    "Report",
    "RuleReport",
    "Status",
    "StepSweep",
    "UserCodeError",
    "assert_gradients",
    "assert_hvp",
    "assert_layer",
    "assert_object",
    "assert_rule",
    "check",
    "check_hvp",
    "check_layer",
    "check_object",
    "check_rule",
    "port",
    "step_sweep",
]
