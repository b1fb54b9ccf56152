"""Moved to `vsr.core.sampling` and `vsr.core.resample`; this name keeps old imports working."""
from vsr.core.resample import resample  # noqa: F401
from vsr.core.sampling import Denoiser, back_project, sample_ddim  # noqa: F401
