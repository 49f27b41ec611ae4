"""`bench gpu` without a GPU: its worker-process measurement runs the worker's chunk path on the CPU,
and the benchmark itself says plainly that it needs a GPU."""
import pytest
import torch

from daas.bench import gpu


def test_worker_processes_run_the_chunk_path_and_count_what_they_labelled():
    measured = gpu.worker_processes(1, 10, seconds=0.5, device="cpu")

    assert measured["processes"] == 1 and measured["chunk"] == 10
    assert measured["images"] >= 10 and measured["images"] % 10 == 0  # whole chunks only
    assert measured["images_per_s"] > 0 and measured["decode_ms_per_image"] > 0 and measured["forward_ms_per_image"] > 0
    assert "espresso" in measured["labels"]  # the bench's first image is coffee.png


def test_process_counts_span_one_to_all_but_one_core():
    assert gpu.process_counts(16) == [1, 4, 8, 15]
    assert gpu.process_counts(2) == [1]
    assert gpu.process_counts(1) == [1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the benchmark would run")
def test_bench_gpu_without_a_gpu_says_so(tmp_path):
    with pytest.raises(SystemExit, match="needs an NVIDIA GPU"):
        gpu.run(tmp_path)
    assert not (tmp_path / "gpu.json").exists()
