import pytest
import torch

from vsrq.pipeline.chunking import CrossFader, crossfade_weights, iter_chunks


@pytest.mark.parametrize("n, size, overlap", [(1, 8, 2), (8, 8, 2), (9, 8, 2), (10, 8, 2), (23, 8, 3), (20, 5, 0), (7, 4, 2)])
def test_chunks_cover_every_frame_in_order(n, size, overlap):
    chunks = list(iter_chunks(range(n), size, overlap))
    covered = set()
    for k, (start, items) in enumerate(chunks):
        assert items == list(range(start, start + len(items)))
        assert len(items) <= size
        if k:
            prev_start, prev = chunks[k - 1]
            assert start == prev_start + size - overlap  # a fixed stride
            assert set(items) - covered, "a chunk with no new frame was yielded"
        covered.update(items)
    assert covered == set(range(n))


def test_bad_chunking_is_refused():
    with pytest.raises(ValueError):
        list(iter_chunks(range(5), 4, 3))
    with pytest.raises(ValueError):
        list(iter_chunks(range(5), 0, 0))


def fade(n: int, size: int, overlap: int, chunk_fn) -> torch.Tensor:
    fader = CrossFader(overlap)
    outs = []
    for start, items in iter_chunks(range(n), size, overlap):
        outs.append(fader.push(start, chunk_fn(start, items)))
    outs.append(fader.flush())
    return torch.cat(outs)


@pytest.mark.parametrize("n, size, overlap", [(1, 8, 2), (9, 8, 2), (10, 8, 2), (23, 8, 3), (16, 4, 2), (12, 6, 0)])
def test_crossfader_emits_each_frame_once_in_order(n, size, overlap):
    out = fade(n, size, overlap, lambda s, items: torch.tensor(items, dtype=torch.float32).view(-1, 1))
    torch.testing.assert_close(out.view(-1), torch.arange(n, dtype=torch.float32))


def test_crossfade_is_linear_between_chunks():
    """Chunk k outputs the constant k: shared frames ramp from k-1 to k, others keep their chunk's value."""
    size, overlap = 8, 3
    out = fade(13, size, overlap, lambda s, items: torch.full((len(items), 1), float(s // (size - overlap))))
    w = crossfade_weights(overlap)
    expected = torch.cat([torch.zeros(5), w, torch.ones(5)])
    torch.testing.assert_close(out.view(-1), expected)
    assert torch.all(w > 0) and torch.all(w < 1)
