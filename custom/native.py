"""The blockwise loss's fused CPU kernels (``blockwise_kernels.c``), compiled with the host's C compiler on first use.

They are built for the CPU at hand (``-march=native``, with 512-bit vectors on x86 where it has them), 1-3 s with
gcc, and kept in ``$XDG_CACHE_HOME/monai-dsd`` (``~/.cache/monai-dsd``) under a digest of the source, the compiler
and the CPU, so that later processes load them at once.

Where no compiler is found, the build fails, or ``DSD_NATIVE_LOSS=0`` is set, :func:`native_kernels` returns
``None`` and the blockwise loss runs its PyTorch operators instead, with the same results to rounding.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import warnings
from functools import lru_cache
from pathlib import Path

import torch

__all__ = ["NativeKernels", "native_kernels", "sorted_columns"]

SOURCE = Path(__file__).with_name("blockwise_kernels.c")
#: Environment variable that turns the kernels off when set to ``0``.
SWITCH = "DSD_NATIVE_LOSS"
#: Voxels per chunk: sums are kept per chunk and added in chunk order, so they do not depend on the thread count.
CHUNK_VOXELS = 2048
_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}
_REAL = {torch.float32: ctypes.c_float, torch.float64: ctypes.c_double}


class NativeKernels:
    """The kernels of one floating-point type, called on contiguous CPU tensors."""

    def __init__(self, library: ctypes.CDLL, dtype: torch.dtype) -> None:
        self.dtype, self._real = dtype, _REAL[dtype]
        self._forward = getattr(library, f"dsd_block_forward_{_SUFFIX[dtype]}")
        self._dice_gradient = getattr(library, f"dsd_dice_gradient_{_SUFFIX[dtype]}")
        self._gather_columns = getattr(library, f"dsd_gather_columns_{_SUFFIX[dtype]}")
        self._scatter_columns = getattr(library, f"dsd_scatter_columns_{_SUFFIX[dtype]}")

    def block_forward(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor,
        supervised: list[int],
        group_sizes: list[int],
        tau: float,
        teacher_grad: bool,
        kl_grad: torch.Tensor | None,
        outputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    ) -> None:
        """Add one block's sums to ``outputs`` and write its distillation gradients to ``kl_grad``.

        Args:
            logits: ``(heads, classes, voxels)`` stacked logits of the block.
            labels: ``(voxels,)`` int64 class indices, each in ``[0, classes)``.
            supervised: stack positions of the deep-supervised heads.
            group_sizes: teacher and students of each distillation group, stacked from position 0.
            tau: distillation temperature.
            teacher_grad: write the teachers' gradients too.
            kl_grad: ``(sum(group_sizes), classes, voxels)``, or ``None`` without groups.
            outputs: ``log_p_label (S,)``, ``p_sums (S, K)``, ``intersections (S, K)``, ``label_counts (K,)`` and
                ``kl (G,)`` (any stride), in the kernels' dtype.

        Raises:
            MemoryError: the kernel could not allocate its scratch memory.
        """
        log_p_label, p_sums, intersections, label_counts, kl = outputs
        for tensor in (logits, labels, log_p_label, p_sums, intersections, label_counts):
            _check_contiguous(tensor)
        status = self._forward(
            _pointer(logits), _pointer(labels), ctypes.c_int64(logits.shape[2]), ctypes.c_int(logits.shape[1]),
            ctypes.c_int(len(supervised)), (ctypes.c_int * max(1, len(supervised)))(*supervised),
            ctypes.c_int(len(group_sizes)), (ctypes.c_int * max(1, len(group_sizes)))(*group_sizes),
            self._real(tau), ctypes.c_int(int(teacher_grad)), None if kl_grad is None else _pointer(kl_grad),
            _pointer(log_p_label), _pointer(p_sums), _pointer(intersections), _pointer(label_counts),
            _pointer(kl), ctypes.c_int64(kl.stride(0)), ctypes.c_int64(CHUNK_VOXELS),
            ctypes.c_int(torch.get_num_threads()),
        )  # fmt: skip
        if status:
            raise MemoryError("DSD loss: the native block kernel could not allocate its scratch memory.")

    def dice_gradient(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor,
        coefficient_a: torch.Tensor,
        coefficient_c: torch.Tensor,
        ce_scale: float,
    ) -> None:
        """Overwrite ``(rows, classes, voxels)`` logits with the deep-supervision gradient of each row's head.

        Raises:
            MemoryError: the kernel could not allocate its scratch memory.
        """
        for tensor in (logits, labels, coefficient_a, coefficient_c):
            _check_contiguous(tensor)
        status = self._dice_gradient(
            _pointer(logits), _pointer(labels), ctypes.c_int64(logits.shape[2]), ctypes.c_int(logits.shape[1]),
            ctypes.c_int(logits.shape[0]), _pointer(coefficient_a), _pointer(coefficient_c), self._real(ce_scale),
            ctypes.c_int64(CHUNK_VOXELS), ctypes.c_int(torch.get_num_threads()),
        )  # fmt: skip
        if status:
            raise MemoryError("DSD loss: the native Dice gradient kernel could not allocate its scratch memory.")

    def gather_columns(
        self, source: torch.Tensor, out: torch.Tensor, columns: tuple[torch.Tensor, torch.Tensor]
    ) -> None:
        """``out[:, position] = source[:, natural]`` for ``columns = (natural, position)``, ``natural`` increasing.

        Args:
            source: ``(channels, voxels)`` with contiguous rows.
            out: contiguous ``(channels, n)``.
            columns: two int64 ``(n,)`` indices, as :func:`sorted_columns` makes them.
        """
        arguments = _column_arguments(source, out, columns, self.dtype)
        self._gather_columns(*arguments, ctypes.c_int(torch.get_num_threads()))

    def scatter_columns(
        self, target: torch.Tensor, block: torch.Tensor, columns: tuple[torch.Tensor, torch.Tensor], add: bool
    ) -> None:
        """``target[:, natural] = block[:, position]``, or ``+=`` with ``add``: the inverse of :meth:`gather_columns`."""
        arguments = _column_arguments(target, block, columns, self.dtype)
        self._scatter_columns(*arguments, ctypes.c_int(int(add)), ctypes.c_int(torch.get_num_threads()))


def _column_arguments(
    volume: torch.Tensor, block: torch.Tensor, columns: tuple[torch.Tensor, torch.Tensor], dtype: torch.dtype
) -> list[ctypes.c_void_p | ctypes.c_int64 | ctypes.c_int]:
    """What both column kernels take: the volume and its row stride, the block, its width and rows, the indices.

    Raises:
        ValueError: a tensor is not in the kernels' dtype or layout.
    """
    if volume.dtype != dtype or block.dtype != dtype:
        raise ValueError(f"DSD loss: the {dtype} column kernels got {volume.dtype} and {block.dtype} tensors.")
    natural, position = columns
    for tensor in (block, natural, position):
        _check_contiguous(tensor)
    _check_rows(volume)
    return [
        _pointer(volume), ctypes.c_int64(volume.stride(0)), _pointer(block), ctypes.c_int64(block.shape[1]),
        ctypes.c_int(block.shape[0]), _pointer(natural), _pointer(position),
    ]  # fmt: skip


def sorted_columns(index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(natural, position)``: the voxels of ``index`` in increasing order, and where each sits in ``index``."""
    natural, position = torch.sort(index)
    return natural.contiguous(), position.contiguous()


def _pointer(tensor: torch.Tensor) -> ctypes.c_void_p:
    return ctypes.c_void_p(tensor.data_ptr())


def _check_contiguous(tensor: torch.Tensor) -> None:
    if not tensor.is_contiguous():
        raise ValueError(f"DSD loss: the native kernels need contiguous tensors, got strides {tensor.stride()}.")


def _check_rows(tensor: torch.Tensor) -> None:
    if tensor.dim() != 2 or tensor.stride(1) != 1:
        raise ValueError(f"DSD loss: the native kernels need 2-d tensors with contiguous rows, got {tensor.stride()}.")


def native_kernels(dtype: torch.dtype, device: torch.device) -> NativeKernels | None:
    """The fused kernels for ``dtype`` on ``device``, or ``None`` where the PyTorch operators must do the work."""
    if device.type != "cpu" or dtype not in _SUFFIX or os.environ.get(SWITCH, "1") == "0":
        return None
    library = _library()
    return None if library is None else NativeKernels(library, dtype)


@lru_cache(maxsize=1)
def _library() -> ctypes.CDLL | None:
    compiler = shlex.split(os.environ.get("CC", "")) or [shutil.which("cc") or shutil.which("gcc")]
    if compiler[0] is None:
        warnings.warn("DSD loss: no C compiler found; the blockwise loss runs on PyTorch operators (slower).")
        return None
    # -ffast-math only when compiling: linked into a shared library, it would make the whole process flush
    # denormals to zero.
    flags = ["-O3", "-ffast-math", "-march=native", "-fopenmp", "-fPIC", "-c"]
    candidates = [flags]
    if is_x86_64():
        # 512-bit vectors where the CPU has them (compilers prefer 256): a block of 8 heads took 6.3 ms instead of
        # 8.7 ms on an AVX-512 Xeon. A compiler that lacks the option builds without it.
        candidates.insert(0, [*flags, "-mprefer-vector-width=512"])
    for attempt, flags in enumerate(candidates, 1):
        cached = _cache_dir() / f"dsd_blockwise-{_build_key(compiler, flags)}.so"
        if cached.is_file():
            try:
                return ctypes.CDLL(str(cached))
            except OSError:
                pass  # a damaged file is built again below
        try:
            return _build(compiler, flags, cached)
        except (OSError, subprocess.SubprocessError) as error:
            if attempt == len(candidates):
                detail = getattr(error, "stderr", None) or error
                fallback = "the blockwise loss runs on PyTorch operators"
                warnings.warn(f"DSD loss: building {SOURCE.name} failed; {fallback}: {detail}")
    return None


def _build(compiler: list[str], flags: list[str], cached: Path) -> ctypes.CDLL:
    """Compile and load the kernels, and keep the library at ``cached`` where the cache can be written.

    Raises:
        OSError, subprocess.SubprocessError: the compiler failed or the library does not load.
    """
    with tempfile.TemporaryDirectory(prefix="dsd-native-") as folder:
        objects = [f"{folder}/kernels_{name}.o" for name in ("f32", "f64")]
        library = Path(folder, "dsd_blockwise.so")
        commands = [
            [*compiler, *flags, str(SOURCE), "-DDSD_DOUBLE=0", "-o", objects[0]],
            [*compiler, *flags, str(SOURCE), "-DDSD_DOUBLE=1", "-o", objects[1]],
            # libgomp resolves to the one PyTorch has loaded, so the kernels share its threads
            [*compiler, "-shared", "-fopenmp", *objects, "-o", str(library), "-lm"],
        ]
        for command in commands:
            subprocess.run(command, check=True, capture_output=True, text=True, timeout=120)
        loaded = ctypes.CDLL(str(library))
        try:  # renamed into place whole, so that a process starting beside this one never loads half a file
            cached.parent.mkdir(parents=True, exist_ok=True)
            staged = cached.with_name(f"{cached.name}.{os.getpid()}")
            shutil.copyfile(library, staged)
            os.replace(staged, cached)
        except OSError:
            pass  # no cache: the next process builds its own
        return loaded


def is_x86_64() -> bool:
    """Whether this machine is x86-64, where the kernels are built for 512-bit vectors first."""
    return platform.machine().lower() in ("x86_64", "amd64")


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "monai-dsd"


def _build_key(compiler: list[str], flags: list[str]) -> str:
    """A digest of what the library depends on, the CPU included: ``-march=native`` builds for this CPU only."""
    digest = hashlib.sha256(SOURCE.read_bytes())
    resolved = shutil.which(compiler[0]) or compiler[0]
    stat = os.stat(resolved) if os.path.exists(resolved) else None
    digest.update(repr((compiler, resolved, stat and (stat.st_size, stat.st_mtime_ns), flags)).encode())
    digest.update(_cpu_description().encode())
    return digest.hexdigest()[:16]


def _cpu_description() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    return "\n".join(sorted({line for line in lines if line.startswith(("model name", "flags", "Features"))}))
