"""jaxcheck: is your hand-written backpropagation right, and if not, exactly where is it wrong?"""

from .check import assert_gradients as assert_gradients
from .check import check as check
from .errors import GradientError as GradientError
from .errors import InputError as InputError
from .errors import JaxcheckError as JaxcheckError
from .errors import NondeterminismError as NondeterminismError
from .errors import PortError as PortError
from .errors import ReimplementationError as ReimplementationError
from .report import LeafReport as LeafReport
from .report import Report as Report
from .sweep import StepSweep as StepSweep
from .sweep import step_sweep as step_sweep
