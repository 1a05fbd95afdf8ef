"""Batch composition (exact-length buckets, the sorted-windows reference, inference groups) and the
exactness of the dense path: it must give what the packed path gives, to float tolerance."""

import numpy as np
import pytest
import torch

from stages.models.batching import (DeviceTokens, TokenIds, bucket_batches, inference_batches, sorted_window_batches)
from stages.models.student_model import BiLSTMClassifier

CPU = torch.device("cpu")
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU"))]


def tokens(lengths: list[int], seed: int = 0) -> TokenIds:
    rng = np.random.default_rng(seed)
    return TokenIds.from_lists(list(rng.integers(3, 40, n)) for n in lengths)


def test_token_ids_store_texts_flat_and_take_rows():
    t = TokenIds.from_lists([len(w) for w in text.split()] for text in ["a bb", "", "ccc d ee"])
    assert t.ids.tolist() == [1, 2, 3, 1, 2] and t.offsets.tolist() == [0, 2, 2, 5]
    assert t.lengths.tolist() == [2, 0, 3] and t.steps.tolist() == [2, 1, 3]  # an empty text is one <pad> step
    taken = t.take(np.array([2, 0, 1]))
    assert taken.ids.tolist() == [3, 1, 2, 1, 2] and taken.lengths.tolist() == [3, 2, 0]


def test_bucket_batches_hold_one_length_each_and_cover_every_row_once():
    steps = np.array([3, 5, 3, 3, 7, 5, 3, 5, 5, 5, 5, 1, 3])
    batches = bucket_batches(steps, 3, torch.Generator().manual_seed(0))
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(steps)))
    assert all(len(set(steps[b].tolist())) == 1 and 1 <= len(b) <= 3 for b in batches)
    # per length: full batches, then one remainder (3 has 5 rows -> 3 + 2; 5 has 6 -> 3 + 3)
    sizes = {}
    for b in batches:
        sizes.setdefault(int(steps[b[0]]), []).append(len(b))
    assert {k: sorted(v) for k, v in sizes.items()} == {1: [1], 3: [2, 3], 5: [3, 3], 7: [1]}


def test_bucket_batches_are_seeded_and_shuffled_within_and_across_lengths():
    steps = np.repeat([2, 4, 6, 8], 40)
    draw = lambda seed: [b.tolist() for b in bucket_batches(steps, 8, torch.Generator().manual_seed(seed))]
    assert draw(1) == draw(1)
    assert draw(1) != draw(2)
    first = draw(1)
    assert [steps[b[0]] for b in first] != sorted(steps[b[0]] for b in first)  # lengths interleave
    assert any(b != sorted(b) for b in first)  # rows are not in file order inside a bucket
    generator = torch.Generator().manual_seed(3)
    epoch1, epoch2 = (bucket_batches(steps, 8, generator) for _ in range(2))
    assert [b.tolist() for b in epoch1] != [b.tolist() for b in epoch2]  # a new order every epoch


def test_sorted_window_batches_are_the_earlier_mixed_length_scheme():
    steps = np.random.default_rng(0).integers(1, 30, 500)
    batches = sorted_window_batches(steps, 10, torch.Generator().manual_seed(0))
    assert sorted(np.concatenate(batches).tolist()) == list(range(500))
    assert all(len(b) == 10 for b in batches)
    assert any(len(set(steps[b].tolist())) > 1 for b in batches)


def test_inference_batches_cut_at_every_length_change_and_batch_size():
    steps = np.array([4, 2, 4, 4, 2, 9, 4])
    exact = inference_batches(steps, 2)
    assert [b.tolist() for b in exact] == [[1, 4], [0, 2], [3, 6], [5]]
    assert [b.tolist() for b in inference_batches(steps, 4, exact=False)] == [[1, 4, 0, 2], [3, 6, 5]]
    second = np.array([1, 1, 3, 2, 1, 1, 1])
    assert [b.tolist() for b in inference_batches(steps, 9, second=second)] == [[1, 4], [0, 6, 3, 2], [5]]
    assert inference_batches(np.zeros(0, np.int64), 4) == []


@pytest.mark.parametrize("device", DEVICES)
def test_device_tokens_gather_right_padded_ids_and_cpu_lengths(device):
    t = TokenIds.from_lists([int(w) for w in text.split()] for text in ["5 6 7", "", "8"])
    rows = np.array([2, 0, 1])
    ids, steps = DeviceTokens(t, torch.device(device)).gather(rows, torch.from_numpy(rows).to(device))
    assert ids.device.type == device
    assert ids.tolist() == [[8, 0, 0], [5, 6, 7], [0, 0, 0]]
    assert steps.tolist() == [1, 3, 1] and steps.device.type == "cpu"


def model(pair: bool) -> BiLSTMClassifier:
    torch.manual_seed(0)
    return BiLSTMClassifier(40, 3, emb_dim=6, hidden=5, fc=4, dropout=0.0, pair=pair,
                            embedding_mode="multichannel", pretrained=torch.randn(40, 6)).eval()


def test_fills_width_means_every_row_is_as_long_as_the_tensor():
    ids = torch.zeros(3, 4, dtype=torch.long)
    assert BiLSTMClassifier.fills_width(ids, torch.tensor([4, 4, 4]))
    assert not BiLSTMClassifier.fills_width(ids, torch.tensor([4, 3, 4]))
    assert BiLSTMClassifier.fills_width(torch.zeros(2, 1, dtype=torch.long), torch.tensor([0, 1]))  # empty = 1 step


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("pair", [False, True])
def test_exact_batches_give_the_packed_path_s_outputs(pair, device):
    """The same rows through exact-length batches (dense LSTM calls) and through mixed-length packed
    batches, gathered the way training and inference gather them."""
    rng = np.random.default_rng(1)
    lengths_a = list(rng.integers(0, 12, 120))
    a, b = tokens(lengths_a, 1), tokens(list(rng.integers(1, 12, 120)), 2) if pair else None
    device = torch.device(device)
    da, db = DeviceTokens(a, device), DeviceTokens(b, device) if pair else None
    m = model(pair).to(device)

    def run(exact: bool) -> tuple[torch.Tensor, list[bool]]:
        out, dense = torch.zeros(120, 3, device=device), []
        with torch.no_grad():
            for rows in inference_batches(a.steps, 16, exact=exact, second=b.steps if pair else None):
                on = torch.from_numpy(rows).to(device)
                inputs = da.gather(rows, on)
                dense.append(m.fills_width(*inputs))
                if pair:
                    inputs = (*inputs, *db.gather(rows, on))
                out[on] = m(*inputs)
        return out, dense

    (exact, dense_exact), (packed, dense_packed) = run(True), run(False)
    assert all(dense_exact) and not all(dense_packed)  # the two runs really take different paths
    torch.testing.assert_close(exact, packed, atol=1e-5, rtol=1e-5)
