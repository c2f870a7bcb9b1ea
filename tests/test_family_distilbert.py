"""DistilBERT (families/distilbert.py, on the general path): every head equals the unpatched model under `full`
(padded batches, outputs and every gradient); `longformer`, `neighborhood`, `linformer` and `performer` equal their
dense rules and formulas (tests/family_checks.py)."""

import pytest
from family_checks import (
    check_full_training_matches_unpatched,
    check_linformer_and_performer_match_their_formulas,
    check_text_head_full_equals_unpatched,
    check_text_local_variants_match_their_dense_rules,
    distilbert_config,
)
from transformers import (
    DistilBertForMaskedLM,
    DistilBertForMultipleChoice,
    DistilBertForQuestionAnswering,
    DistilBertForSequenceClassification,
    DistilBertForTokenClassification,
    DistilBertModel,
)

pytestmark = pytest.mark.cuda_policy  # also run on CPU under CUDA's policy (conftest)

HEADS = [
    DistilBertModel,
    DistilBertForMaskedLM,
    DistilBertForSequenceClassification,
    DistilBertForQuestionAnswering,
    DistilBertForTokenClassification,
    DistilBertForMultipleChoice,
]


@pytest.mark.parametrize("cls", HEADS, ids=[c.__name__ for c in HEADS])
def test_every_head_under_full_equals_unpatched_on_padded_batches(cls):
    check_text_head_full_equals_unpatched(cls, distilbert_config())


def test_full_training_loss_and_every_gradient_match_unpatched():
    check_full_training_matches_unpatched(DistilBertForMaskedLM, distilbert_config(), text=True)


def test_local_variants_match_their_dense_rules():
    check_text_local_variants_match_their_dense_rules(DistilBertModel, distilbert_config())


def test_linformer_and_performer_match_their_formulas():
    check_linformer_and_performer_match_their_formulas(DistilBertModel, distilbert_config(), text=True)
