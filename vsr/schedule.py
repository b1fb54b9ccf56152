"""Moved to `vsr.core.schedule`; this name keeps old imports working."""
from vsr.core.schedule import add_noise, eps_from_x0, prf_noise_level, timestep_set  # noqa: F401
