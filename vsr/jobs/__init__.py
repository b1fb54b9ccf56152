"""Jobs: how a transcode is cut into resumable pieces, independent of who runs them.

- `Job`, `run_chunk(job, frames) -> segment records`: the picklable unit a local or
  distributed runner maps over a video's frame ranges.
- `open_journal`, `Journal`: which segments are finished (resume after a kill).
- `prefetch(iterable, size)`: one bounded producer thread, errors re-raised in the consumer.
- files: fsync'ed appends, atomic replaces, the work folder beside the output.
"""
from vsr.jobs.chunk import QUEUE_SIZE, Job, run_chunk
from vsr.jobs.files import (
    check_output_path,
    fsync_append,
    fsync_dir,
    replace_durably,
    segment_name,
    source_fingerprint,
    temp_dir_for,
    write_new_file,
)
from vsr.jobs.journal import JOURNAL, JOURNAL_VERSION, Journal, open_journal
from vsr.jobs.prefetch import Prefetch, prefetch

__all__ = [
    "JOURNAL", "JOURNAL_VERSION", "QUEUE_SIZE", "Job", "Journal", "Prefetch", "check_output_path", "fsync_append",
    "fsync_dir", "open_journal", "prefetch", "replace_durably", "run_chunk", "segment_name", "source_fingerprint",
    "temp_dir_for", "write_new_file",
]
