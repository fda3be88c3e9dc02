"""`hald sweep`: grids of settings over seeds with shared stages, paired statistics and reports."""
from hald_ext.sweep.config import SweepConfigError, load, validate  # noqa: F401
from hald_ext.sweep.plan import make_plan  # noqa: F401
