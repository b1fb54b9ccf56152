"""Video I/O: the only package of vsr that imports PyAV (`av`).

- `probe(source) -> VideoInfo`: what a file or URL holds (typed; no av objects leak out).
- `scan(source) -> FrameIndex`: frame index -> pts and the keyframes to seek to (demux only).
- `decode(source, start=, stop=) -> Iterator[Frame]`: upright RGB frames with the source's
  pts/time_base, seeking to `start`; uint8, or uint16 (0..65535) above 8 bits.
- `EncoderSettings`, `StreamFormat`, `check_*`: the output encoder, checked up front.
- `SegmentWriter`, `read_segment`: vsr's own packet store, one resumable segment per file.
- `assemble(...)`, `check_output(...)`: the final container, other streams copied as they are.
"""
from vsr.io.decoder import DEINTERLACE, decode
from vsr.io.encoder import (
    CRF_RANGES,
    X26X_PRESETS,
    EncoderSettings,
    StreamFormat,
    alpha_format,
    check_codec,
    check_crf,
    check_encoder,
    check_encoder_opens,
    default_codec,
    merge_encoder_options,
    holds_alpha,
    needs_global_header,
    ten_bit_format,
    video_encoders,
)
from vsr.io.index import FrameIndex, SeekPoint, scan
from vsr.io.logs import route_ffmpeg_logs
from vsr.io.mux import assemble, check_output
from vsr.io.segments import MAGIC, SegmentWriter, file_sha256, read_segment
from vsr.io.source import DEFAULT_RATE, HDR10, Colour, StreamInfo, VideoInfo, has_alpha, is_live, is_url, probe

__all__ = [
    "CRF_RANGES", "DEFAULT_RATE", "DEINTERLACE", "HDR10", "MAGIC", "X26X_PRESETS", "Colour", "EncoderSettings", "FrameIndex", "SeekPoint",
    "SegmentWriter", "StreamFormat", "StreamInfo", "VideoInfo", "assemble", "check_codec", "check_crf", "check_encoder",
    "check_encoder_opens", "default_codec", "merge_encoder_options", "check_output", "decode", "alpha_format", "has_alpha", "holds_alpha", "file_sha256", "is_live", "is_url", "needs_global_header",
    "probe", "read_segment", "route_ffmpeg_logs", "scan", "ten_bit_format", "video_encoders",
]
