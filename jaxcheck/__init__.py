"""jaxcheck: is your hand-written backpropagation right, and if not, exactly where is it wrong?

Three opinions of dJ/dθ — your NumPy backprop, finite differences of a JAX twin of your cost
(vmapped over every perturbed parameter vector), and ``jax.grad`` of the twin — compared per
parameter, with a verdict that says who is wrong.
"""

from .check import assert_gradients as assert_gradients
from .check import check as check
from .errors import GradientError as GradientError
from .errors import InputError as InputError
from .errors import JaxcheckError as JaxcheckError
from .errors import MissingDependencyError as MissingDependencyError
from .errors import NondeterminismError as NondeterminismError
from .errors import PortError as PortError
from .errors import ReimplementationError as ReimplementationError
from .errors import UserCodeError as UserCodeError
from .layer import assert_layer as assert_layer
from .layer import check_layer as check_layer
from .objects import assert_object as assert_object
from .objects import check_object as check_object
from .port import port as port
from .report import LeafReport as LeafReport
from .report import Report as Report
from .sweep import StepSweep as StepSweep
from .sweep import step_sweep as step_sweep
from .verdict import Status as Status

__version__ = "0.1.0"

__all__ = [
    "GradientError",
    "InputError",
    "JaxcheckError",
    "LeafReport",
    "MissingDependencyError",
    "NondeterminismError",
    "PortError",
    "ReimplementationError",
    "Report",
    "Status",
    "StepSweep",
    "UserCodeError",
    "assert_gradients",
    "assert_layer",
    "assert_object",
    "check",
    "check_layer",
    "check_object",
    "port",
    "step_sweep",
]
