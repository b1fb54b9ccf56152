"""Device and dtype, resolved once at the edge (STYLE.md 8): `--device auto` and
`--dtype auto` become concrete here, and a model is copied onto them."""
from __future__ import annotations

import copy

import torch

from vsr.errors import ConfigError


def cpu_supports_bf16() -> bool:
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_device(device: str) -> torch.device:
    """'auto' -> cuda if available, else mps, else cpu; explicit devices are checked."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device '{device}' requested but CUDA is not available: use --device cpu or auto")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("device 'mps' requested but MPS is not available: use --device cpu or auto")
    if not (device == "cpu" or device.startswith("cuda") or device == "mps"):
        raise ConfigError(f"device {device!r}: allowed auto, cpu, cuda, cuda:N, mps")
    try:
        return torch.device(device)
    except RuntimeError:
        raise ConfigError(f"device {device!r}: allowed auto, cpu, cuda, cuda:N, mps") from None


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """'auto': fp16 on CUDA/MPS; bf16 on a CPU with native bf16 support, else fp32."""
    if dtype != "auto":
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    if device.type in ("cuda", "mps"):
        return torch.float16
    return torch.bfloat16 if cpu_supports_bf16() else torch.float32


def exact_float32(device: torch.device, dtype: torch.dtype) -> None:
    """float32 on CUDA means IEEE float32: turn off TF32, the 10-bit-mantissa format
    PyTorch lets cuDNN use for float32 convolutions by default on Ampere and later GPUs
    (`torch.backends.cudnn.allow_tf32`; matmuls likewise). With it a float32 result moves
    by about 5e-4 with the batch size (the convolution algorithm differs), which breaks
    "the batch never changes the output" (STYLE.md 7) and the golden frames. Process-wide,
    as PyTorch's flags are; fp16/bf16 (the `auto` dtype on CUDA) are untouched."""
    if device.type == "cuda" and dtype == torch.float32:
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False


def prepare_net(net: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """The net on device/dtype (a copy unless it is already there); channels_last off fp32-CPU;
    float32 on CUDA without TF32 (`exact_float32`)."""
    exact_float32(device, dtype)
    p = next(iter(net.parameters()), None)
    if p is not None and p.device == device and p.dtype == dtype:
        return net
    # nn.Module.to, not diffusers' override, which warns on every cast of a model without fp32-only modules
    out = torch.nn.Module.to(copy.deepcopy(net), device=device, dtype=dtype)
    if not (device.type == "cpu" and dtype == torch.float32):
        out = out.to(memory_format=torch.channels_last)
    return out.eval().requires_grad_(False)


def runtime_record(device: torch.device, dtype: torch.dtype) -> dict:
    """What a job computes on, as the journal records it: a resume must match it exactly
    (`auto` may resolve differently on another machine or torch)."""
    return {"device": str(device), "dtype": str(dtype).removeprefix("torch."), "torch": torch.__version__}


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether `exc` means memory ran out: MemoryError (host), torch's OutOfMemoryError
    (CUDA/MPS), or the RuntimeError torch's CPU allocator raises ("can't allocate memory")."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(
        w in text for w in ("out of memory", "can't allocate memory", "not enough memory", "failed to allocate")
    )


def release_memory(device: torch.device) -> None:
    """Give cached blocks back after an out-of-memory error, before a retry."""
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps" and hasattr(torch, "mps"):
        torch.mps.empty_cache()
