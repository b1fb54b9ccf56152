"""Old home of `vsr upscale`, kept so `from vsr.transcode import upscale_video` (and the
other names below) go on working: the command moved to `vsr.pipelines.transcode`, the
journal, prefetch threads and `run_chunk` to `vsr.jobs`."""
from vsr.jobs import JOURNAL, JOURNAL_VERSION, QUEUE_SIZE, Job, run_chunk, temp_dir_for  # noqa: F401
from vsr.pipelines.transcode import (  # noqa: F401
    SEGMENT_SECONDS,
    EncodeOptions,
    Progress,
    Result,
    build_upscaler,
    upscale_video,
)
from vsr.pipelines.upscale_cli import add_cli, engine_config_from_args, run_cli  # noqa: F401
