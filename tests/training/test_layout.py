"""The appended SAT-block layout: positions, labels, and a mask that hides SATs from standard tokens."""

import pytest
import torch

from sdsat_vllm.training.layout import IGNORE_INDEX, build_sat_batch, sample_insertion_points
from tiny_models import make_tiny_model


def test_positions_and_labels_line_up():
    L, K = 12, 3
    ids = torch.arange(100, 100 + L)[None]  # token value = 100 + its index, so labels are easy to read
    pts = torch.tensor([[0, 4, 7]])
    b = build_sat_batch(ids, pts, [7, 7, 7])
    assert b.input_ids.shape == (1, L + 3 * K)
    assert b.input_ids[0, L:].tolist() == [7] * 9
    assert b.position_ids[0, :L].tolist() == list(range(L))
    for m, p in enumerate(pts[0].tolist()):
        for j in range(1, K + 1):
            row = L + m * K + (j - 1)
            assert b.position_ids[0, row] == p + j  # SAT j of block p sits at p+j
            assert b.labels[0, row] == 100 + p + j + 1  # ... and predicts x_{p+j+1}
            assert b.sat_offsets[row] == j
    assert b.labels[0, : L - 1].tolist() == list(range(101, 100 + L))
    assert b.labels[0, L - 1] == IGNORE_INDEX


def test_mask_structure():
    L, K = 10, 2
    b = build_sat_batch(torch.arange(L)[None], torch.tensor([[2, 5]]), [1, 2])
    a = b.allowed[0]
    assert torch.equal(a[:L, :L], torch.ones(L, L, dtype=torch.bool).tril())
    assert not a[:L, L:].any()  # standard tokens never see a SAT
    # SAT 2 of block p=5 (row L+3): standard keys 0..5, and SATs 1..2 of its own block only
    row = a[L + 3]
    assert row[:L].tolist() == [True] * 6 + [False] * 4
    assert row[L:].tolist() == [False, False, True, True]
    assert a[L + 0, L:].tolist() == [True, False, False, False]


def test_distinct_sat_ids_follow_offsets():
    b = build_sat_batch(torch.arange(10)[None], torch.tensor([[1, 3]]), [50, 51, 52])
    assert b.input_ids[0, 10:].tolist() == [50, 51, 52, 50, 51, 52]


def test_insertion_points_leave_room_for_labels():
    g = torch.Generator().manual_seed(0)
    pts = sample_insertion_points(64, 20, 10, 4, g)
    assert pts.min() >= 0 and pts.max() <= 20 - 4 - 2
    assert all(len(set(r)) == 10 for r in pts.tolist())
    with pytest.raises(ValueError, match="do not fit"):
        sample_insertion_points(1, 10, 9, 4)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_standard_logits_identical_with_and_without_sat_blocks(arch):
    model, _ = make_tiny_model(arch)
    ids = torch.randint(0, 300, (2, 24), generator=torch.Generator().manual_seed(1))
    plain = model(input_ids=ids).logits
    b = build_sat_batch(ids, sample_insertion_points(2, 24, 5, 3), [301, 302, 303])
    laid_out = model(input_ids=b.input_ids, position_ids=b.position_ids,
                     attention_mask=b.additive_mask(torch.float32)).logits
    torch.testing.assert_close(laid_out[:, :24], plain, rtol=1e-5, atol=1e-5)


def test_sat_rows_equal_a_separate_decode_time_forward():
    """SAT j of block p must see exactly what a decode-time forward [x_0..x_p, SAT x K] sees."""
    model, _ = make_tiny_model("llama")
    ids = torch.randint(0, 300, (1, 20), generator=torch.Generator().manual_seed(2))
    sats = [301, 301, 301]
    b = build_sat_batch(ids, torch.tensor([[3, 9]]), sats)
    laid_out = model(input_ids=b.input_ids, position_ids=b.position_ids,
                     attention_mask=b.additive_mask(torch.float32)).logits
    for m, p in enumerate([3, 9]):
        alone = model(input_ids=torch.cat([ids[:, : p + 1], torch.tensor([sats])], 1)).logits
        torch.testing.assert_close(laid_out[0, 20 + 3 * m: 20 + 3 * (m + 1)], alone[0, p + 1:], rtol=1e-5, atol=1e-5)


def test_no_label_across_a_document_boundary():
    """label_ok False at t: neither the standard position t-1 nor any SAT whose span x_{p+1..p+j+1} covers
    t is trained; targets before the boundary keep their labels."""
    L = 12
    ids = torch.arange(100, 100 + L)[None]
    ok = torch.ones(1, L, dtype=torch.bool)
    ok[0, 6] = False  # x_6 starts a new document (or is the separator of a cut one)
    b = build_sat_batch(ids, torch.tensor([[1, 3, 6]]), [7, 8, 9], label_ok=ok)
    std = b.labels[0, :L].tolist()
    assert std[5] == IGNORE_INDEX and std[4] == 105 and std[6] == 107
    sat = b.labels[0, L:].view(3, 3).tolist()
    assert sat[0] == [103, 104, 105]  # block after x_1: x_2..x_5 stay inside the first document
    assert sat[1] == [105, IGNORE_INDEX, IGNORE_INDEX]  # block after x_3: x_6 would be crossed from j=2 on
    assert sat[2] == [108, 109, 110]  # block after x_6: x_7..x_10 all after the boundary
    unmasked = build_sat_batch(ids, torch.tensor([[1, 3, 6]]), [7, 8, 9])
    assert (unmasked.labels != IGNORE_INDEX).sum() > (b.labels != IGNORE_INDEX).sum()


def test_sat_batch_to_moves_every_tensor():
    ids = torch.arange(40).reshape(2, 20)
    batch = build_sat_batch(ids, torch.tensor([[3, 9], [4, 12]]), (99, 99, 99), torch.ones_like(ids, dtype=torch.bool))
    assert batch.to("cpu") is batch  # already there: no copy
    moved = batch.to("meta")
    assert all(getattr(moved, n).device.type == "meta" for n in ("input_ids", "position_ids", "allowed", "labels",
                                                                  "sat_offsets", "insertion_points"))
    assert moved.num_standard == batch.num_standard


def test_insertion_points_stand_where_preferred_and_elsewhere_only_when_too_few():
    preferred = torch.zeros(3, 30, dtype=torch.bool)
    preferred[0, 10:] = True  # plenty
    preferred[1, 5:8] = True  # three of four blocks
    pts = sample_insertion_points(3, 30, 4, 3, torch.Generator().manual_seed(0), preferred)
    assert all(p >= 10 for p in pts[0].tolist())
    assert {5, 6, 7} <= set(pts[1].tolist())
    assert len(set(pts[2].tolist())) == 4  # none preferred: anywhere
    # without preferred points: the same draws as before the option existed
    same = sample_insertion_points(3, 30, 4, 3, torch.Generator().manual_seed(0))
    again = sample_insertion_points(3, 30, 4, 3, torch.Generator().manual_seed(0), None)
    assert torch.equal(same, again)
