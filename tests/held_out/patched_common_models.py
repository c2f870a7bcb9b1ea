"""Held-out check (run by run_transformers_common.sh, not collected by pytest): transformers' own ModelTesterMixin on
BERT, RoBERTa and ViT, every constructed model patched "full" by hf_flexattn when HFX_PATCH=1 (else the stock models:
the baseline whose outcomes the patched run is compared with)."""

import os
import unittest

from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
    RobertaConfig,
    RobertaForMaskedLM,
    RobertaForSequenceClassification,
    RobertaModel,
    ViTConfig,
    ViTForImageClassification,
    ViTModel,
)

from ..test_modeling_common import ModelTesterMixin, floats_tensor, ids_tensor, random_attention_mask

PATCH = os.environ.get("HFX_PATCH") == "1"
_depth = [0]


def _patch_on_construction(cls):
    original = cls.__dict__["__init__"]

    def __init__(self, *args, **kwargs):
        _depth[0] += 1
        try:
            original(self, *args, **kwargs)
        finally:
            _depth[0] -= 1
        if PATCH and _depth[0] == 0:
            import hf_flexattn

            hf_flexattn.patch(self, "full")

    cls.__init__ = __init__


class TextTester:
    def __init__(self, parent, config_class, batch_size=3, seq_length=7):
        self.parent, self.config_class = parent, config_class
        self.batch_size, self.seq_length = batch_size, seq_length
        self.vocab_size, self.hidden_size, self.num_hidden_layers, self.num_attention_heads = 99, 32, 2, 4
        self.intermediate_size, self.type_vocab_size, self.num_labels = 37, 16, 3
        self.is_training = True

    def get_config(self):
        return self.config_class(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            intermediate_size=self.intermediate_size,
            hidden_dropout_prob=0.1,
            attention_probs_dropout_prob=0.1,
            max_position_embeddings=512,
            type_vocab_size=self.type_vocab_size,
            initializer_range=0.02,
            num_labels=self.num_labels,
        )

    def prepare_config_and_inputs_for_common(self):
        input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size)
        inputs = {
            "input_ids": input_ids,
            "token_type_ids": ids_tensor([self.batch_size, self.seq_length], self.type_vocab_size),
            "attention_mask": random_attention_mask([self.batch_size, self.seq_length]),
        }
        return self.get_config(), inputs


class VisionTester:
    def __init__(self, parent, batch_size=3):
        self.parent, self.batch_size = parent, batch_size
        self.image_size, self.patch_size, self.num_channels = 16, 4, 3
        self.hidden_size, self.num_hidden_layers, self.num_attention_heads = 32, 2, 4
        self.seq_length = (self.image_size // self.patch_size) ** 2 + 1
        self.is_training, self.num_labels = True, 3

    def get_config(self):
        return ViTConfig(
            image_size=self.image_size,
            patch_size=self.patch_size,
            num_channels=self.num_channels,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            intermediate_size=37,
            hidden_dropout_prob=0.1,
            attention_probs_dropout_prob=0.1,
            initializer_range=0.02,
            num_labels=self.num_labels,
        )

    def prepare_config_and_inputs_for_common(self):
        pixel_values = floats_tensor([self.batch_size, self.num_channels, self.image_size, self.image_size])
        return self.get_config(), {"pixel_values": pixel_values}


BERT = (BertModel, BertForMaskedLM, BertForSequenceClassification, BertForTokenClassification)
ROBERTA = (RobertaModel, RobertaForMaskedLM, RobertaForSequenceClassification)
VIT = (ViTModel, ViTForImageClassification)
for _cls in (*BERT, *ROBERTA, *VIT):
    _patch_on_construction(_cls)


class BertPatchedTest(ModelTesterMixin, unittest.TestCase):
    all_model_classes = BERT

    def setUp(self):
        self.model_tester = TextTester(self, BertConfig)


class RobertaPatchedTest(ModelTesterMixin, unittest.TestCase):
    all_model_classes = ROBERTA

    def setUp(self):
        self.model_tester = TextTester(self, RobertaConfig)


class ViTPatchedTest(ModelTesterMixin, unittest.TestCase):
    all_model_classes = VIT
    test_resize_embeddings = False

    def setUp(self):
        self.model_tester = VisionTester(self)
