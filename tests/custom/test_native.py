"""The blockwise loss's fused CPU kernels: the PyTorch operators' results, at any thread count, and a fallback."""

from __future__ import annotations

import shutil
import warnings

import pytest
import torch

import custom.blockwise_loss as blockwise_loss
import custom.native as native
from custom.blockwise_loss import DiceCESettings, KLGroup, blockwise_head_terms
from custom.losses import DSDLoss
from tests.helpers import deferred_heads, head_terms, leaves_of

K = 4
SPATIAL, ENCODER_SCALES, DECODER_SCALES = (16, 16, 16), [1, 2, 4, 8], [2, 4, 8, 16]


@pytest.fixture
def kernels_build():
    if native.native_kernels(torch.float64, torch.device("cpu")) is None:
        pytest.skip("the native kernels do not build here (no C compiler)")


def _terms_and_grads(dtype: torch.dtype, **loss_kwargs) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
    encoders = deferred_heads(SPATIAL, ENCODER_SCALES, K, dtype=dtype)
    decoders = deferred_heads(SPATIAL, DECODER_SCALES, K, dtype=dtype, seed=1)
    target = torch.randint(0, K, (2, 1, *SPATIAL), generator=torch.Generator().manual_seed(2))
    total, terms = head_terms(DSDLoss(**loss_kwargs), encoders, decoders, target, upsample=False)
    leaves = leaves_of(encoders + decoders)
    grads = torch.autograd.grad(total, leaves, allow_unused=True)
    return {name: value.detach() for name, value in terms.items()}, list(grads)


# one block per item of two chunks of the kernels, or 16 blocks of part of a chunk
BLOCKS = {"chunks": 64 * 150_000, "blocks": 64 * 500}


@pytest.mark.usefixtures("kernels_build")
@pytest.mark.parametrize("block_elements", sorted(BLOCKS.values()), ids=sorted(BLOCKS, key=BLOCKS.get))
@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
@pytest.mark.parametrize("loss_kwargs", [{}, {"detach_teacher": True, "tau": 2.0}, {"alpha1": 0.0}])
def test_native_kernels_equal_the_pytorch_operators(dtype, tolerance, loss_kwargs, block_elements, monkeypatch):
    monkeypatch.setitem(blockwise_loss.BLOCK_ELEMENTS, "cpu", block_elements)
    results = {}
    for setting in ("1", "0"):
        monkeypatch.setenv("DSD_NATIVE_LOSS", setting)
        results[setting] = _terms_and_grads(dtype, **loss_kwargs)
    (terms, grads), (expected_terms, expected_grads) = results["1"], results["0"]
    for name, value in expected_terms.items():
        torch.testing.assert_close(terms[name], value, rtol=tolerance, atol=tolerance)
    for grad, expected in zip(grads, expected_grads):
        if expected is None:
            assert grad is None or not grad.any()
        else:
            torch.testing.assert_close(grad, expected, rtol=tolerance, atol=tolerance * expected.abs().max())


def _kernel_results(kernels: native.NativeKernels, threads: int) -> list[torch.Tensor]:
    """Both kernels' outputs on one block of several chunks, computed with ``threads`` threads."""
    heads, supervised, group_sizes, voxels = 5, [1, 2], [3, 2], 3 * native.CHUNK_VOXELS + 100
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(heads, K, voxels, generator=generator)
    labels = torch.randint(0, K, (voxels,), generator=generator)
    kl_grad = torch.zeros(sum(group_sizes), K, voxels)
    outputs = (
        torch.zeros(len(supervised)),
        torch.zeros(len(supervised), K),
        torch.zeros(len(supervised), K),
        torch.zeros(K),
        torch.zeros(len(group_sizes)),
    )
    dice_grad = logits[supervised].contiguous()
    coefficients = torch.rand(2, len(supervised), K, generator=generator)
    torch.set_num_threads(threads)
    kernels.block_forward(logits, labels, supervised, group_sizes, 3.0, True, kl_grad, outputs)
    kernels.dice_gradient(dice_grad, labels, coefficients[0].contiguous(), coefficients[1].contiguous(), 0.5)
    return [*outputs, kl_grad, dice_grad]


@pytest.mark.usefixtures("kernels_build")
def test_native_results_do_not_depend_on_the_thread_count():
    # only the kernels' own sums: PyTorch's matmuls around them may split their reductions by thread count
    kernels = native.native_kernels(torch.float32, torch.device("cpu"))
    threads = torch.get_num_threads()
    try:
        one_thread, three_threads = (_kernel_results(kernels, count) for count in (1, 3))
    finally:
        torch.set_num_threads(threads)
    assert one_thread[0].abs().sum() > 0 and one_thread[-2].abs().sum() > 0
    for result, result_again in zip(one_thread, three_threads):
        assert torch.equal(result, result_again)


@pytest.mark.usefixtures("kernels_build")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_column_kernels_gather_and_scatter_as_index_select_and_index_copy(dtype):
    generator = torch.Generator().manual_seed(0)
    source = torch.randn(2, 3, 50, dtype=dtype, generator=generator)  # rows 50 apart, as one item of a batch
    index = torch.randperm(50, generator=generator)[:20]
    columns = native.sorted_columns(index)
    kernels = native.native_kernels(dtype, torch.device("cpu"))

    block = torch.empty(3, 20, dtype=dtype)
    kernels.gather_columns(source[1], block, columns)
    assert torch.equal(block, source[1].index_select(1, index))

    target = source.clone()
    kernels.scatter_columns(target[1], block * 2, columns, add=False)
    assert torch.equal(target[1], source[1].index_copy(1, index, block * 2)) and torch.equal(target[0], source[0])
    kernels.scatter_columns(target[1], block, columns, add=True)
    assert torch.equal(target[1], source[1].index_copy(1, index, block * 3))
    with pytest.raises(ValueError, match="column kernels"):
        kernels.gather_columns(source[1].half(), block, columns)


@pytest.mark.usefixtures("kernels_build")
def test_labels_outside_the_classes_are_refused_before_the_kernels_read_them():
    heads = deferred_heads(SPATIAL, ENCODER_SCALES, K)
    target = torch.randint(0, K, (2, 1, *SPATIAL))
    target[1, 0, 3, 4, 5] = K
    with pytest.raises(ValueError, match=rf"class indices in \[0, {K}\), got 0 to {K}"):
        blockwise_head_terms(heads, target, [0], [KLGroup(3, (0, 1, 2))], 3.0, False, DiceCESettings())


@pytest.mark.parametrize(
    "env, expect_warning",
    [
        ({"DSD_NATIVE_LOSS": "0"}, None),
        ({"CC": "/nonexistent/cc"}, "building blockwise_kernels.c failed;"),
        ({"CC": "", "PATH": ""}, "no C compiler found"),
    ],
    ids=["switched off", "build fails", "no compiler"],
)
def test_without_the_kernels_the_loss_runs_on_pytorch_operators(env, expect_warning, monkeypatch):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    native._library.cache_clear()
    try:
        if expect_warning:
            with pytest.warns(UserWarning, match=expect_warning):
                assert native.native_kernels(torch.float32, torch.device("cpu")) is None
        else:
            assert native.native_kernels(torch.float32, torch.device("cpu")) is None
        terms, grads = _terms_and_grads(torch.float64)
        assert torch.isfinite(terms["total"]) and all(g is None or torch.isfinite(g).all() for g in grads)
    finally:
        native._library.cache_clear()


@pytest.mark.parametrize("device, dtype", [("cuda", torch.float32), ("cpu", torch.bfloat16), ("cpu", torch.float16)])
def test_kernels_are_only_offered_for_cpu_float32_and_float64(device, dtype):
    assert native.native_kernels(dtype, torch.device(device)) is None


@pytest.mark.usefixtures("kernels_build")
def test_loading_the_kernels_keeps_denormal_numbers():
    # a library linked with -ffast-math would switch the process to flushing denormals to zero
    assert float(torch.tensor([1e-40]) * 1.5) > 0


@pytest.mark.usefixtures("kernels_build")
def test_a_built_library_is_kept_and_loaded_without_the_compiler(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    native._library.cache_clear()
    try:
        assert native._library() is not None
        assert len(list((tmp_path / "monai-dsd").glob("dsd_blockwise-*.so"))) == 1
        native._library.cache_clear()

        def no_compiler(*args, **kwargs):
            raise AssertionError("the kept library should have been loaded")

        monkeypatch.setattr(native.subprocess, "run", no_compiler)
        assert native.native_kernels(torch.float64, torch.device("cpu")) is not None
    finally:
        native._library.cache_clear()


@pytest.mark.usefixtures("kernels_build")
@pytest.mark.skipif(not native.is_x86_64(), reason="the vector-width option is x86's")
def test_a_compiler_without_the_vector_width_option_builds_without_it(tmp_path, monkeypatch):
    compiler = tmp_path / "old-cc"
    real = shutil.which("cc") or shutil.which("gcc")
    compiler.write_text(
        f'#!/bin/sh\nfor a in "$@"; do case "$a" in -mprefer-vector-width=*) exit 1;; esac; done\nexec {real} "$@"\n'
    )
    compiler.chmod(0o755)
    monkeypatch.setenv("CC", str(compiler))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    native._library.cache_clear()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            kernels = native.native_kernels(torch.float64, torch.device("cpu"))
        assert kernels is not None
        assert len(list((tmp_path / "monai-dsd").glob("dsd_blockwise-*.so"))) == 1
    finally:
        native._library.cache_clear()
