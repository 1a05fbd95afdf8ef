"""stages/models/student_model.py: the BiLSTM's shapes, siamese features, padding, embedding modes, parameter
counts, and the distillation losses."""

import pytest
import torch
import torch.nn.functional as F

from stages.models.student_model import BiLSTMClassifier, count_parameters, distill_loss


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def model(pair=False, mode="non-static", vocab=30, dim=8, hidden=6, fc=5, labels=3, dropout=0.0, seed=0):
    torch.manual_seed(seed)
    return BiLSTMClassifier(vocab, labels, emb_dim=dim, hidden=hidden, fc=fc, dropout=dropout, pair=pair,
                            embedding_mode=mode, pretrained=torch.randn(vocab, dim)).eval()


def padded(rows: list[list[int]], width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    width = width or max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
    return ids, torch.tensor([len(r) for r in rows])


# --------------------------------------------------------------------------- model


def test_forward_shapes_single_and_pair():
    a, la = padded([[3, 4, 5], [6, 7], [8]])
    b, lb = padded([[9, 10], [11, 12, 13, 14], [15]])
    assert model()(a, la).shape == (3, 3)
    assert model(pair=True)(a, la, b, lb).shape == (3, 3)
    with pytest.raises(ValueError, match="both sentences"):
        model(pair=True)(a, la)


def test_siamese_features_are_h1_h2_product_and_distance():
    m = model(pair=True, hidden=7)
    a, la = padded([[3, 4, 5], [6, 7], [8, 9, 10, 11, 12]])
    b, lb = padded([[9, 10], [11, 12, 13, 14, 15, 16], [17]])
    with torch.no_grad():
        h1, h2 = m.encode(a, la), m.encode(b, lb)
        features = m.features(a, la, b, lb)
    assert h1.shape == (3, 2 * 7)
    assert features.shape == (3, 4 * 2 * 7)
    torch.testing.assert_close(features, torch.cat([h1, h2, h1 * h2, (h1 - h2).abs()], -1), atol=1e-6, rtol=1e-5)
    # the same encoder for both sides: swapping the sentences swaps h1 and h2
    with torch.no_grad():
        swapped = m.features(b, lb, a, la)
    torch.testing.assert_close(swapped[:, :14], features[:, 14:28], atol=1e-6, rtol=1e-5)


def test_encode_returns_final_forward_and_backward_states():
    m = model(hidden=4)
    ids, lengths = padded([[3, 4, 5, 6]])
    with torch.no_grad():
        outputs, _ = m.lstm(m.embed(ids))
        h = m.encode(ids, lengths)
    # forward state after the last word, backward state after reading back to the first word
    torch.testing.assert_close(h[0, :4], outputs[0, -1, :4])
    torch.testing.assert_close(h[0, 4:], outputs[0, 0, 4:])


@pytest.mark.parametrize("pair", [False, True])
def test_padding_does_not_change_the_output(pair):
    m = model(pair=pair, mode="multichannel")
    short, long = [3, 4, 5], [6, 7, 8, 9, 10, 11, 12, 13]
    alone = padded([short])
    batched = padded([short, long], width=12)  # more padding than any sentence needs
    with torch.no_grad():
        if pair:
            out_alone = m(*alone, *padded([[14, 15]]))
            out_batched = m(*batched, *padded([[14, 15], [16]], width=9))
        else:
            out_alone, out_batched = m(*alone), m(*batched)
    torch.testing.assert_close(out_batched[:1], out_alone, atol=1e-6, rtol=1e-5)


def test_empty_text_is_accepted():
    ids, lengths = padded([[3, 4], []], width=2)
    assert torch.isfinite(model()(ids, lengths)).all()


def _one_step(m: BiLSTMClassifier) -> None:
    m.train()
    optimizer = torch.optim.Adadelta([p for p in m.parameters() if p.requires_grad], lr=1.0)
    ids, lengths = padded([[3, 4, 5], [6, 7]])
    F.cross_entropy(m(ids, lengths), torch.tensor([0, 2])).backward()
    optimizer.step()


def test_multichannel_keeps_one_copy_frozen_and_trains_the_other():
    m = model(mode="multichannel")
    frozen, trained = m.static_embedding.weight.clone(), m.embedding.weight.clone()
    torch.testing.assert_close(frozen, trained)  # both start from the pretrained vectors
    assert m.lstm.input_size == 2 * 8
    _one_step(m)
    assert torch.equal(m.static_embedding.weight, frozen)
    changed = (m.embedding.weight != trained).any(dim=1)
    assert changed[[3, 4, 5, 6, 7]].all() and not changed[[0, 8, 9]].any()  # only the words seen, never <pad>


def test_static_mode_has_no_embedding_gradients():
    m = model(mode="static")
    before = m.embedding.weight.clone()
    _one_step(m)
    assert m.embedding.weight.grad is None and not m.embedding.weight.requires_grad
    assert torch.equal(m.embedding.weight, before)
    assert m.lstm.weight_ih_l0.grad is not None


def test_rand_mode_needs_no_pretrained_matrix():
    m = BiLSTMClassifier(20, 2, emb_dim=8, hidden=4, fc=4, embedding_mode="rand")
    assert m.embedding.weight.requires_grad and m.static_embedding is None
    assert torch.equal(m.embedding.weight[0], torch.zeros(8))
    assert m.embedding.weight.abs().max() <= 0.25


def test_parameter_counts_match_a_hand_computation():
    h, fc, emb, vocab = 150, 200, 50, 1000
    m = BiLSTMClassifier(vocab, 2, emb_dim=emb, hidden=h, fc=fc, embedding_mode="non-static")
    lstm = 2 * 4 * h * (emb + h + 2)  # two directions; input and recurrent weights, two bias vectors
    head = (2 * h + 1) * fc + (fc + 1) * 2
    assert count_parameters(m) == {"all": lstm + head + vocab * emb, "without_embeddings": lstm + head}
    # The paper's 0.96M: 300-d word2vec, multichannel (LSTM input 600), hidden 150, FC 200
    paper = BiLSTMClassifier(10, 2, emb_dim=300, hidden=150, fc=200, embedding_mode="multichannel")
    assert count_parameters(paper)["without_embeddings"] == 963_002
    assert count_parameters(paper)["all"] == 963_002 + 2 * 10 * 300


# --------------------------------------------------------------------------- loss


STUDENT = torch.tensor([[1.0, -1.0], [0.5, 2.0], [0.0, 0.0]])
TEACHER = torch.tensor([[2.0, -3.0], [0.5, 1.0], [1.0, -1.0]])
LABELS = torch.tensor([0, -1, 1])


def test_alpha_zero_is_the_squared_logit_distance():
    expected = ((1 + 4) + (0 + 1) + (1 + 1)) / 3  # per row sum over classes, mean over rows
    assert distill_loss(STUDENT, TEACHER, LABELS, alpha=0.0).item() == pytest.approx(expected)
    assert distill_loss(STUDENT, TEACHER, None, alpha=0.0).item() == pytest.approx(expected)


def test_alpha_one_is_cross_entropy_over_labelled_rows_only():
    expected = F.cross_entropy(STUDENT[[0, 2]], torch.tensor([0, 1])).item()
    assert distill_loss(STUDENT, TEACHER, LABELS, alpha=1.0).item() == pytest.approx(expected)
    assert distill_loss(STUDENT, None, LABELS, alpha=1.0).item() == pytest.approx(expected)  # the baseline
    assert distill_loss(STUDENT, None, torch.tensor([-1, -1, -1]), alpha=1.0).item() == 0.0


def test_mixed_loss_weights_both_terms():
    ce = F.cross_entropy(STUDENT[[0, 2]], torch.tensor([0, 1])).item()
    mse = 8 / 3
    assert distill_loss(STUDENT, TEACHER, LABELS, alpha=0.3).item() == pytest.approx(0.3 * ce + 0.7 * mse)


def test_kl_loss_is_scaled_by_t_squared_and_zero_for_equal_logits():
    t = 2.0
    p_t, p_s = F.softmax(TEACHER / t, -1), F.softmax(STUDENT / t, -1)
    expected = t * t * (p_t * (p_t.log() - p_s.log())).sum(-1).mean().item()
    got = distill_loss(STUDENT, TEACHER, LABELS, alpha=0.0, kind="kl", temperature=t).item()
    assert got == pytest.approx(expected, rel=1e-5) and got > 0
    assert distill_loss(TEACHER, TEACHER, LABELS, alpha=0.0, kind="kl", temperature=t).item() == pytest.approx(0, abs=1e-6)


def test_loss_gradients_reach_the_student_only():
    student = STUDENT.clone().requires_grad_()
    teacher = TEACHER.clone().requires_grad_()
    distill_loss(student, teacher.detach(), LABELS, alpha=0.0).backward()
    torch.testing.assert_close(student.grad, 2 * (STUDENT - TEACHER) / 3)  # d/dz of the mean squared distance
    student.grad = None
    distill_loss(student, None, torch.tensor([-1, -1, -1]), alpha=1.0).backward()
    assert torch.equal(student.grad, torch.zeros_like(STUDENT))
