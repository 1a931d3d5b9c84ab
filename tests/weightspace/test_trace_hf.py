"""Derived specs of Hugging Face GPT-2, BERT and ViT (small random configs, no downloads)."""
import pytest
import torch
from torch import nn

from deepalign.weightspace import PermutationSpec, check_equivalent
from trace_helpers import assert_exact_symmetry, mix_across_blocks, random_weights

transformers = pytest.importorskip("transformers")


class Field(nn.Module):
    """One tensor of a model output (``check_equivalent`` compares tensors), optionally
    through a classifier head of its own."""

    def __init__(self, model, field, head=None):
        super().__init__()
        self.model, self.field, self.head = model, field, head

    def forward(self, x):
        out = getattr(self.model(x), self.field)
        return out if self.head is None else self.head(out)


def gpt2(**extra):
    config = transformers.GPT2Config(n_embd=16, n_layer=2, n_head=2, vocab_size=40,
                                     n_positions=16, use_cache=False, bos_token_id=0,
                                     eos_token_id=0, **extra)
    return transformers.GPT2LMHeadModel(config)


def bert(**extra):
    config = transformers.BertConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=24, vocab_size=40,
                                     max_position_embeddings=16, type_vocab_size=2, **extra)
    return transformers.BertModel(config)


def vit():
    config = transformers.ViTConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                    intermediate_size=24, image_size=8, patch_size=4,
                                    num_channels=3, num_labels=3)
    return transformers.ViTForImageClassification(config)


TOKENS = torch.randint(0, 40, (2, 7), generator=torch.Generator().manual_seed(0))
IMAGES = torch.randn(2, 3, 8, 8, dtype=torch.float64)
CASES = {"gpt2": (lambda: Field(gpt2(), "logits"), TOKENS),
         "gpt2_eager": (lambda: Field(gpt2(attn_implementation="eager"), "logits"), TOKENS),
         "bert": (lambda: Field(bert(), "pooler_output", nn.Linear(16, 3)), TOKENS),
         "bert_eager": (lambda: Field(bert(attn_implementation="eager"), "last_hidden_state"),
                        TOKENS),
         "vit": (lambda: Field(vit(), "logits"), IMAGES)}


@pytest.mark.parametrize("case", sorted(CASES))
def test_derived_spec_is_an_exact_symmetry(case):
    make, x = CASES[case]
    spec = assert_exact_symmetry(make(), x, seeds=(0, 1))
    assert [g.kind for g in spec.block_groups] == ["heads", "heads"]


def test_gpt2_packed_qkv_and_tied_head():
    model = gpt2()
    spec = PermutationSpec.from_module(model, TOKENS)  # the model itself, ModelOutput and all
    axes = spec.axes_to_perm
    stream = axes["transformer.wte.weight"][1]
    assert axes["lm_head.weight"] == (None, stream)  # tied to wte: the same perm
    assert axes["transformer.wpe.weight"] == (None, stream)
    attn = "transformer.h.0.attn"
    qk, v = f"P_{attn}.qk", f"P_{attn}.v"
    assert axes[f"{attn}.c_attn.weight"] == (stream, (qk, qk, v))  # Conv1D: (in, out)
    assert axes[f"{attn}.c_proj.weight"] == (v, stream)
    assert spec.block_groups[0].name == f"H_{attn}"
    wrapped = PermutationSpec.from_module(Field(gpt2(), "logits"), TOKENS)

    def prefixed(item):
        if isinstance(item, tuple):
            return tuple(prefixed(p) for p in item)
        return item if item is None else item.replace("P_", "P_model.")

    assert wrapped.axes_to_perm == {f"model.{k}": tuple(prefixed(p) for p in a)
                                    for k, a in axes.items()}


def test_tied_weights_must_get_the_same_perm():
    model = Field(gpt2(), "logits").double()
    spec = PermutationSpec.from_module(model, TOKENS)
    stream = spec.axes_to_perm["model.lm_head.weight"][1]
    untied = dict(spec.axes_to_perm)
    untied["model.lm_head.weight"] = (None, None)  # forget the tie
    broken = PermutationSpec(untied, spec.sizes, spec.block_groups)
    perms = spec.random_perms(torch.Generator().manual_seed(0))
    assert stream in perms
    with pytest.raises(AssertionError, match="differs"):
        check_equivalent(model, random_weights(model), broken, perms, TOKENS)


def test_bert_embeddings_and_pooler():
    spec = PermutationSpec.from_module(CASES["bert"][0](), TOKENS)
    axes = spec.axes_to_perm
    stream = axes["model.embeddings.word_embeddings.weight"][1]
    for key in ("token_type_embeddings.weight", "position_embeddings.weight"):
        assert axes[f"model.embeddings.{key}"] == (None, stream)
    assert axes["model.embeddings.LayerNorm.weight"] == (stream,)
    pooler = axes["model.pooler.dense.weight"]
    assert pooler == ("P_model.pooler.dense", stream)  # the pooler is a hidden space of its own
    assert axes["head.weight"] == (None, "P_model.pooler.dense")


def test_vit_embeddings():
    spec = PermutationSpec.from_module(vit(), IMAGES.float())
    axes = spec.axes_to_perm
    stream = axes["vit.embeddings.patch_embeddings.projection.weight"][0]
    assert axes["vit.embeddings.cls_token"] == (None, None, stream)
    assert axes["vit.embeddings.position_embeddings"] == (None, None, stream)
    assert axes["classifier.weight"] == (None, stream)


def test_mixing_dims_across_gpt2_heads_breaks_the_function():
    model = Field(gpt2(), "logits").double()
    spec = PermutationSpec.from_module(model, TOKENS)
    free = PermutationSpec(spec.axes_to_perm, spec.sizes)
    perms = spec.random_perms(torch.Generator().manual_seed(0))
    mixed = mix_across_blocks(spec, perms, spec.block_groups[0].perms[0])
    with pytest.raises(AssertionError, match="differs"):
        check_equivalent(model, random_weights(model), free, mixed, TOKENS)


def test_keyword_inputs_give_the_same_spec():
    model = bert()
    kwargs = {"input_ids": TOKENS, "token_type_ids": TOKENS % 2,
              "attention_mask": torch.ones_like(TOKENS)}
    assert PermutationSpec.from_module(model, kwargs) == PermutationSpec.from_module(model,
                                                                                   TOKENS)
