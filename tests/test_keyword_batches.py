"""Dict and keyword batches in the auxiliary data stream and step(aux_batch=...): the auxiliary Fisher sees
the attention mask."""

from __future__ import annotations

import pytest
import torch
from reference import flat, trainable
from torch import nn

import fishleg_core as fl
from fishleg_core.auxiliary.data import split_batch


class MaskedEncoder(nn.Module):
    """Embedding, attention whose padded keys are masked out, a per-token head: logits (B, classes, T)."""

    def __init__(self, vocab: int = 6, embed: int = 4, classes: int = 3) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.attention = nn.MultiheadAttention(embed, 2, batch_first=True)
        self.head = nn.Linear(embed, classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> dict:
        x = self.embed(input_ids)
        padding = None if attention_mask is None else attention_mask == 0
        x, _ = self.attention(x, x, x, key_padding_mask=padding, need_weights=False)
        return {"logits": self.head(x).transpose(1, 2)}


def logits(out):
    return out["logits"]


def hf_batch(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 6, (3, 5), generator=generator)
    mask = torch.ones(3, 5, dtype=torch.long)
    mask[0, 3:] = 0
    mask[2, 1:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.randint(0, 3, (3, 5), generator=generator)}


def test_a_mapping_batch_calls_the_model_with_keywords_and_its_labels_are_the_targets():
    batch = hf_batch()
    call, targets = split_batch(batch)
    assert isinstance(call, fl.ModelCall) and set(call.kwargs) == {"input_ids", "attention_mask"}
    assert targets is batch["labels"]


@pytest.mark.usefixtures("float64")
def test_the_fisher_on_a_keyword_batch_is_the_fisher_of_the_masked_model():
    """F·v on the dict batch equals F·v of the model with the mask bound in, and differs from the unmasked
    model's: the mask reaches the model."""
    torch.manual_seed(0)
    model = MaskedEncoder().double()
    batch = hf_batch()
    v = {name: torch.randn_like(p) for name, p in trainable(model).items()}
    names = list(v)
    call, _ = split_batch(batch)
    Fv = flat(fl.fisher_vp(model, "categorical", call, v, output_fn=logits), names)

    class Bound(nn.Module):
        def __init__(self, mask):
            super().__init__()
            self.inner, self.mask = model, mask

        def forward(self, ids):
            return self.inner(ids, self.mask)

    bound = Bound(batch["attention_mask"])
    expected = fl.fisher_vp(
        bound, "categorical", batch["input_ids"], {f"inner.{n}": t for n, t in v.items()}, output_fn=logits
    )
    torch.testing.assert_close(Fv, flat(expected, [f"inner.{n}" for n in names]), rtol=1e-12, atol=1e-12)
    unmasked = flat(fl.fisher_vp(model, "categorical", batch["input_ids"], v, output_fn=logits), names)
    assert not torch.allclose(Fv, unmasked, rtol=1e-3)


def train(batches, **options):
    torch.manual_seed(1)
    model = MaskedEncoder()
    optimizer = fl.FishLeg(model, "categorical", lr=0.05, aux_every=1, output_fn=logits, **options)
    for batch in batches:
        optimizer.zero_grad()
        out = model(batch["input_ids"], attention_mask=batch["attention_mask"])
        nn.functional.cross_entropy(out["logits"], batch["labels"]).backward()
        optimizer.step(aux_batch=None if "aux_data" in options or "batch_fn" in options else batch)
    return flat(trainable(model), list(trainable(model))), optimizer


def test_dict_batches_by_aux_data_by_aux_batch_and_by_batch_fn_take_the_same_steps():
    batches = [hf_batch(seed) for seed in range(3)]
    by_stream, optimizer = train(batches, aux_data=batches)
    assert optimizer.last_aux_loss is not None and torch.isfinite(optimizer.last_aux_loss)
    by_argument, _ = train(batches)
    pairs = [(b["input_ids"], b["attention_mask"], b["labels"]) for b in batches]
    by_function, _ = train(
        batches,
        aux_data=pairs,
        batch_fn=lambda b: ({"input_ids": b[0], "attention_mask": b[1]}, b[2]),
    )
    assert torch.equal(by_stream, by_argument) and torch.equal(by_stream, by_function)


def test_a_batch_fn_returning_something_else_is_named_in_the_error():
    model = MaskedEncoder()
    optimizer = fl.FishLeg(model, "categorical", lr=0.05, aux_every=1, output_fn=logits, batch_fn=lambda b: b)
    model(hf_batch()["input_ids"])["logits"].sum().backward()
    with pytest.raises(TypeError, match="batch_fn must return"):
        optimizer.step(aux_batch=hf_batch())
