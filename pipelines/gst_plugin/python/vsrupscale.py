"""`vsrupscale`: vsr's upscaler as a GStreamer element (a Python `GstBase.BaseTransform`).

GStreamer's Python plugin loader (Debian: gstreamer1.0-python3-plugin-loader) loads every
`python/*.py` under each folder of GST_PLUGIN_PATH; `vsr gst-plugin-path` prints the folder
(`--env` also the PYTHONPATH that lets the loader's Python import vsr and torch).

    gst-launch-1.0 videotestsrc num-buffers=30 ! vsrupscale scale=2 ! videoconvert ! x264enc ! mp4mux ! filesink location=out.mp4
    gst-launch-1.0 ... ! vsrupscale target=1080p steps=1 config=fast ! ...

Caps: RGB in, RGB out at the new size (put `videoconvert` around it); the output size
follows from the input's by `target` (an output height such as 1080p, or WxH) or `scale`.
Buffers keep their timestamps. The model loads when the caps are set (the first buffer
waits for it).
"""
from __future__ import annotations

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstBase", "1.0")
gi.require_version("GstVideo", "1.0")
from gi.repository import GLib, GObject, Gst, GstBase, GstVideo  # noqa: E402

import numpy as np  # noqa: E402

Gst.init_check(None)

MAX_SIDE = 16384
CAPS = Gst.Caps.from_string(f"video/x-raw,format=RGB,width=[1,{MAX_SIDE}],height=[1,{MAX_SIDE}]")
RW = GObject.ParamFlags.READWRITE


def _check_target(target: str) -> str | None:
    """Why `target` is not an output height or WxH (None: it is, or it is empty)."""
    from vsr.targets import parse_size, parse_target

    target = (target or "").strip()
    try:
        if "x" in target.lower():
            parse_size(target)
        elif target:
            parse_target(target)
    except Exception as exc:  # noqa: BLE001 - vsr's UsageError: its message says why
        return f"vsrupscale target={target}: {exc}"
    return None


def _output_size(width: int, height: int, target: str, scale: float) -> tuple[int, int]:
    """The output (width, height) for an input, by vsr's own size rules (even sides)."""
    from vsr.targets import parse_size, plan_output

    target = (target or "").strip()
    if "x" in target.lower():
        return plan_output(width, height, size=parse_size(target), fit="stretch").out
    if target:
        return plan_output(width, height, target=target).out
    return plan_output(width, height, scale=scale).out


class VsrUpscale(GstBase.BaseTransform):
    __gstmetadata__ = (
        "vsr upscaler", "Filter/Effect/Video", "Video super-resolution with a diffusion prior (vsr)", "vsr",
    )
    __gsttemplates__ = (
        Gst.PadTemplate.new("src", Gst.PadDirection.SRC, Gst.PadPresence.ALWAYS, CAPS),
        Gst.PadTemplate.new("sink", Gst.PadDirection.SINK, Gst.PadPresence.ALWAYS, CAPS),
    )
    __gproperties__ = {
        "target": (str, "target", "output height (720p, 1080p, 4k, NNNp) or WxH; empty: scale", "", RW),
        "scale": (float, "scale", "scale factor when no target", 1.0, 16.0, 2.0, RW),
        "model": (str, "model", "model folder or hub id; empty: the shipped prior", "", RW),
        "steps": (int, "steps", "DDIM steps; 0: the config's", 0, 50, 0, RW),
        "config": (str, "config", "engine config YAML or preset name (default, fast, quality)", "", RW),
        "device": (str, "device", "auto, cpu, cuda, cuda:N, mps", "auto", RW),
    }

    def __init__(self) -> None:
        super().__init__()
        self._props = {"target": "", "scale": 2.0, "model": "", "steps": 0, "config": "", "device": "auto"}
        self._upscaler = None
        self._base = None  # the upscaler before the size is known (weights loaded once)
        self._in = self._out = None
        self._target_error: str | None = None  # a bad `target`, said when the pipeline starts
        self._posted: set[str] = set()  # errors already on the bus (caps are asked many times)

    def do_get_property(self, prop: GObject.ParamSpec):
        return self._props[prop.name]

    def do_set_property(self, prop: GObject.ParamSpec, value) -> None:
        self._props[prop.name] = value
        if prop.name == "target":  # checked now; the element has no bus yet to say it on
            self._target_error = _check_target(value)
            if self._target_error:
                Gst.error(self._target_error)
        if prop.name != "target" and prop.name != "scale":
            self._base = None  # the model or its config changed: rebuild at the next caps

    def _error(self, message: str) -> None:
        """Post `message` as an element error on the bus (gst-launch prints it and exits 1), once."""
        if message not in self._posted and self.post_message(Gst.Message.new_error(self, _gerror(message), message)):
            self._posted.add(message)  # (before the element is in a pipeline there is no bus: not posted)

    def do_start(self) -> bool:
        if self._target_error:
            self._error(self._target_error)
            return False
        return True

    # -- caps: the output size follows from the input size --------------------------
    def _size(self, width: int, height: int) -> tuple[int, int] | None:
        """The output size for this input, or None when `target` is refused (`do_set_caps`
        then says why on the bus: when caps are linked there is no bus yet)."""
        try:
            return _output_size(width, height, self._props["target"], self._props["scale"])
        except Exception:  # noqa: BLE001 - vsr's UsageError, posted by do_set_caps
            return None

    def do_transform_caps(self, direction: Gst.PadDirection, caps: Gst.Caps, filter_: Gst.Caps) -> Gst.Caps:
        out = Gst.Caps.new_empty()
        for i in range(caps.get_size()):
            s = caps.get_structure(i).copy()
            ok_w, w = s.get_int("width")
            ok_h, h = s.get_int("height")
            size = self._size(w, h) if direction == Gst.PadDirection.SINK and ok_w and ok_h else None
            if size is not None:
                s.set_value("width", size[0])
                s.set_value("height", size[1])
            else:  # the other way round, unfixed, or a size vsr refuses (said by set_caps): any size
                s.set_value("width", Gst.IntRange(range(1, MAX_SIDE + 1)))
                s.set_value("height", Gst.IntRange(range(1, MAX_SIDE + 1)))
            s.remove_field("pixel-aspect-ratio")
            out.append_structure(s)
        if filter_ is not None:
            out = filter_.intersect_full(out, Gst.CapsIntersectMode.FIRST)
        return out

    def do_fixate_caps(self, direction: Gst.PadDirection, caps: Gst.Caps, othercaps: Gst.Caps) -> Gst.Caps:
        othercaps = othercaps.truncate()
        s = othercaps.get_structure(0)
        if direction == Gst.PadDirection.SINK:
            ins = caps.get_structure(0)
            _, w = ins.get_int("width")
            _, h = ins.get_int("height")
            size = self._size(w, h)
            if size is not None:
                s.fixate_field_nearest_int("width", size[0])
                s.fixate_field_nearest_int("height", size[1])
            ok, num, den = ins.get_fraction("framerate")
            if ok:
                s.fixate_field_nearest_fraction("framerate", num, den)
        return othercaps.fixate()

    def do_get_unit_size(self, caps: Gst.Caps):
        info = GstVideo.VideoInfo.new_from_caps(caps)
        return True, info.size

    def do_set_caps(self, incaps: Gst.Caps, outcaps: Gst.Caps) -> bool:
        self._in = GstVideo.VideoInfo.new_from_caps(incaps)
        self._out = GstVideo.VideoInfo.new_from_caps(outcaps)
        try:
            if self._target_error:
                raise ValueError(self._target_error)
            _output_size(self._in.width, self._in.height, self._props["target"], self._props["scale"])
        except Exception as exc:  # noqa: BLE001 - a target refused for this input
            self._error(self._target_error or f"vsrupscale target={self._props['target']}: "
                        f"{self._in.width}x{self._in.height} input: {exc}")
            return False
        try:
            if self._base is None:
                from vsr.config import EngineConfig
                from vsr.engine import Upscaler

                p = self._props
                config = EngineConfig.from_yaml(p["config"]) if p["config"] else EngineConfig()
                config = config.replace(steps=p["steps"] or None, device=p["device"] or None)
                self._base = Upscaler.from_pretrained(p["model"] or None, config=config)
            self._upscaler = self._base.with_config(size=(self._out.width, self._out.height))
        except Exception as exc:  # noqa: BLE001 - reported on the bus, negotiation fails
            self._error(str(exc))
            return False
        return True

    # -- the frames ------------------------------------------------------------------
    def do_transform(self, inbuf: Gst.Buffer, outbuf: Gst.Buffer) -> Gst.FlowReturn:
        vin, vout = self._in, self._out
        data = inbuf.extract_dup(0, inbuf.get_size())
        rows = np.frombuffer(data, np.uint8)[: vin.stride[0] * vin.height].reshape(vin.height, vin.stride[0])
        image = np.ascontiguousarray(rows[:, : vin.width * 3].reshape(vin.height, vin.width, 3))
        try:
            up = self._upscaler(image)
        except Exception as exc:  # noqa: BLE001 - an error on the bus stops the pipeline
            self._error(str(exc))
            return Gst.FlowReturn.ERROR
        stride = vout.stride[0]
        if stride != vout.width * 3:
            padded = np.zeros((vout.height, stride), np.uint8)
            padded[:, : vout.width * 3] = up.reshape(vout.height, -1)
            up = padded
        outbuf.fill(0, up.tobytes())
        return Gst.FlowReturn.OK


def _gerror(message: str) -> GLib.Error:
    return GLib.Error.new_literal(Gst.CoreError.quark(), message, Gst.CoreError.FAILED)


GObject.type_register(VsrUpscale)
__gstelementfactory__ = ("vsrupscale", Gst.Rank.NONE, VsrUpscale)
