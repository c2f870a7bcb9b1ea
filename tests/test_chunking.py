"""hf_flexattn.late_chunking against a hand computation: the token states of one full-attention pass over the whole
document, pooled per chunk by hand; padded batches; a patched model; a SentenceTransformer; bad input."""

import pytest
import torch

import hf_flexattn

from helpers import tiny_bert_config

TEXTS = [
    "the socket module opens a network connection to a server port and reads the reply " * 3,
    "a regular expression pattern matches a group",
    "threads share a lock and a queue; workers take jobs from the pool until the queue is empty " * 2,
]


@pytest.fixture(scope="module")
def tokenizer(minilm_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_dir)


@pytest.fixture(scope="module")
def encoder(tokenizer):
    from transformers import BertModel

    torch.manual_seed(0)
    config = tiny_bert_config(vocab_size=tokenizer.vocab_size, max_position_embeddings=128, attn_implementation="sdpa")
    return BertModel(config, add_pooling_layer=False).eval()


def hand_states(encoder, tokenizer, text):
    """The document's own tokens' states ([CLS] and [SEP] dropped) from one unpadded full-attention pass."""
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return encoder(input_ids=ids).last_hidden_state[0, 1:-1]


def test_chunk_size_equals_the_pooled_states_of_one_full_pass_in_a_padded_batch(encoder, tokenizer):
    got = hf_flexattn.late_chunking(encoder, TEXTS, chunk_size=5, tokenizer=tokenizer, batch_size=3)
    assert len(got) == len(TEXTS)
    for text, vectors in zip(TEXTS, got):
        states = hand_states(encoder, tokenizer, text)
        expected = torch.stack([states[i : i + 5].mean(0) for i in range(0, len(states), 5)])
        torch.testing.assert_close(vectors, expected, atol=1e-5, rtol=1e-5)


def test_token_spans_max_pooling_and_normalisation_by_hand(encoder, tokenizer):
    spans = [[(0, 3), (10, 12)], [(2, 4)], [(0, 1), (1, 7)]]
    got = hf_flexattn.late_chunking(
        encoder, TEXTS, chunk_spans=spans, tokenizer=tokenizer, pooling="max", normalize=True
    )
    for text, doc_spans, vectors in zip(TEXTS, spans, got):
        states = hand_states(encoder, tokenizer, text)
        expected = torch.stack([states[a:b].max(0).values for a, b in doc_spans])
        torch.testing.assert_close(vectors, torch.nn.functional.normalize(expected, dim=-1), atol=1e-5, rtol=1e-5)


def test_character_spans_map_to_the_tokens_that_overlap_them(encoder, tokenizer):
    text = TEXTS[1]  # "a regular expression pattern matches a group"
    start, inner = text.index("expression"), text.index("group") + 2
    got = hf_flexattn.late_chunking(
        encoder,
        [text],
        char_spans=[[(start, start + len("expression pattern")), (inner, inner + 1)]],
        tokenizer=tokenizer,
    )[0]
    tokens = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    first = next(t for t, (a, b) in enumerate(tokens) if a <= start < b)
    last = next(t for t, (a, b) in enumerate(tokens) if a < start + len("expression pattern") <= b)
    states = hand_states(encoder, tokenizer, text)
    torch.testing.assert_close(got[0], states[first : last + 1].mean(0), atol=1e-5, rtol=1e-5)
    group = next(t for t, (a, b) in enumerate(tokens) if a <= inner < b)
    torch.testing.assert_close(got[1], states[group], atol=1e-5, rtol=1e-5)  # one character inside one token


def test_patched_model_reads_past_its_positions_and_ties_full_attention_within_its_window(encoder, tokenizer):
    import copy

    long_text = " ".join(f"word{i % 17} and more text" for i in range(60))  # > 128 tokens: past the positions
    patched = copy.deepcopy(encoder)
    hf_flexattn.extend_position_embeddings(patched, 512)
    hf_flexattn.patch(patched, "longformer", window=512, global_tokens=[0])
    long = hf_flexattn.late_chunking(patched, [long_text, TEXTS[0]], chunk_size=16, tokenizer=tokenizer, max_length=512)
    n = len(tokenizer(long_text, add_special_tokens=False)["input_ids"])
    assert n > 128 and long[0].shape == (-(-n // 16), encoder.config.hidden_size)
    # a window covering the whole (short) document is full attention: the same vectors as the unpatched model
    short = hf_flexattn.late_chunking(encoder, [TEXTS[0]], chunk_size=16, tokenizer=tokenizer)
    torch.testing.assert_close(long[1], short[0], atol=1e-4, rtol=1e-4)


def test_sentence_transformer_pooling_and_normalisation_are_its_own(minilm_dir):
    """all-MiniLM-L6-v2 as a SentenceTransformer: mean pooling, then its Normalize module."""
    st = pytest.importorskip("sentence_transformers")
    model = st.SentenceTransformer(minilm_dir, device="cpu")
    text = TEXTS[2]
    got = hf_flexattn.late_chunking(model, [text], chunk_size=7)[0]
    states = hand_states(model[0].auto_model, model.tokenizer, text)
    expected = torch.stack([states[i : i + 7].mean(0) for i in range(0, len(states), 7)])
    torch.testing.assert_close(got, torch.nn.functional.normalize(expected, dim=-1), atol=1e-5, rtol=1e-5)
    # [CLS] and [SEP] are left out of every chunk, so one chunk over the whole document is close to, not equal to,
    # the model's own sentence embedding (which pools them too)
    whole = hf_flexattn.late_chunking(model, [text], chunk_size=10_000)[0][0]
    assert torch.nn.functional.cosine_similarity(whole, model.encode(text, convert_to_tensor=True), dim=0) > 0.95


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"chunk_size": 0}, "chunk_size=0"),
        ({"chunk_size": -3}, "chunk_size=-3"),
        ({"chunk_spans": [[(0, 2), (1, 3)]]}, "overlap"),
        ({"chunk_spans": [[(2, 2)]]}, "empty span"),
        ({"chunk_spans": [[(0, 999)]]}, "outside document 0"),
        ({"chunk_spans": [[(-1, 2)]]}, "outside document 0"),
        ({"char_spans": [[(0, 10_000)]]}, "char_spans[0]"),
        ({"chunk_spans": [[(0, 2)], [(0, 1)]]}, "2 entries for 1 documents"),
        ({"chunk_size": 4, "chunk_spans": [[(0, 2)]]}, "exactly one of"),
        ({}, "exactly one of"),
        ({"chunk_size": 4, "pooling": "cls"}, "pooling='cls'"),
        ({"chunk_size": 4, "batch_size": 0}, "batch_size=0"),
    ],
)
def test_bad_input_is_refused_naming_the_argument(encoder, tokenizer, kwargs, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        hf_flexattn.late_chunking(encoder, [TEXTS[1]], tokenizer=tokenizer, **kwargs)


def test_one_string_and_a_missing_tokenizer_are_refused(encoder, tokenizer):
    with pytest.raises(ValueError, match="documents is one string"):
        hf_flexattn.late_chunking(encoder, TEXTS[0], chunk_size=4, tokenizer=tokenizer)
    with pytest.raises(ValueError, match="tokenizer=None"):
        hf_flexattn.late_chunking(encoder, TEXTS, chunk_size=4)


def test_character_spans_ending_or_starting_at_punctuation_take_no_neighbouring_token(encoder, tokenizer):
    """A span that ends where a punctuation token begins ("...the queue|;") or starts where one ends (";| workers")
    pools the words' tokens only: a token overlaps a span when it starts before the span's end and ends after its
    start (not at them)."""
    text = TEXTS[2]  # "threads share a lock and a queue; workers take jobs ..."
    semicolon = text.index(";")
    after = text.index("workers")
    spans = [(0, semicolon), (semicolon + 1, after + len("workers"))]
    got = hf_flexattn.late_chunking(encoder, [text], char_spans=[spans], tokenizer=tokenizer)[0]
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    punctuation = next(t for t, (a, b) in enumerate(offsets) if (a, b) == (semicolon, semicolon + 1))
    states = hand_states(encoder, tokenizer, text)
    # the words before the semicolon: tokens 0 .. punctuation − 1; after it: "workers"'s tokens only
    workers = [t for t, (a, b) in enumerate(offsets) if after <= a and b <= after + len("workers")]
    assert workers and workers[0] == punctuation + 1
    torch.testing.assert_close(got[0], states[:punctuation].mean(0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[1], states[workers[0] : workers[-1] + 1].mean(0), atol=1e-5, rtol=1e-5)
