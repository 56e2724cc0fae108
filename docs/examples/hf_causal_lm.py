"""FishLeg on a tiny Hugging Face GPT-2 (``GPT2LMHeadModel``) from random initialisation, on sequences of a
random Markov chain: every Conv1D (c_attn per q, k, v projection, c_proj, c_fc, mlp.c_proj) gets Kronecker
factors; the embeddings and layer norms are stepped by Adam (``fallback``); the auxiliary batches are
Hugging Face dicts (``input_ids``, ``attention_mask``).

Run from the repository root: ``PYTHONPATH=. python docs/examples/hf_causal_lm.py [--steps 100]``.
"""

from __future__ import annotations

import functools

import torch
from example_common import Comparison, arguments, compare
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel

import fishleg_core as fl

VOCAB, LENGTH, BATCH = 16, 16, 8
ADAM_RATES = (3e-3, 1e-2, 3e-2)
# The tuning guide's settings for a GPT (docs/guide/tuning.md).
FISHLEG = {
    "lr": 1.0,
    "damping": 0.3,
    "aux_lr": 1e-2,
    "aux_every": 1,
    "momentum": 0.8,
    "fallback": {"optimizer": "adam", "params": ["*.wte", "*.wpe", "*.ln_*"], "lr": 3e-2},
}


def markov_batches(count: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """Hugging Face batches of sequences drawn from one fixed random Markov chain over ``VOCAB`` tokens."""
    transitions = torch.softmax(3 * torch.randn(VOCAB, VOCAB, generator=torch.Generator().manual_seed(0)), dim=1)
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        tokens = [torch.randint(0, VOCAB, (BATCH,), generator=generator)]
        for _ in range(LENGTH - 1):
            tokens.append(torch.multinomial(transitions[tokens[-1]], 1, generator=generator).squeeze(1))
        ids = torch.stack(tokens, dim=1)
        batches.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids})
    return batches


def build(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=VOCAB, n_positions=LENGTH, n_embd=32, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0
    )
    return GPT2LMHeadModel(config)


def loss_fn(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(**batch).loss


def train_batches(seed: int = 0) -> list[dict[str, torch.Tensor]]:
    return markov_batches(8, seed=10 * seed + 1)


def make_fishleg(model: nn.Module, seed: int = 0, **overrides: object) -> fl.FishLeg:
    aux = [{key: batch[key] for key in ("input_ids", "attention_mask")} for batch in markov_batches(4, 10 * seed + 2)]
    return fl.FishLeg(
        model,
        "categorical",
        aux_data=aux,  # dicts: the model is called with them as keywords
        output_fn=lambda out: out.logits.transpose(1, 2),  # (batch, vocab, length) for the categorical
        **{**FISHLEG, **overrides},
    )


def main(steps: int = 100, seed: int = 0, fishleg: dict | None = None, adam: bool = True) -> Comparison:
    """Adam at each of ``ADAM_RATES`` (unless not ``adam``) and FishLeg at ``FISHLEG`` updated by ``fishleg``."""
    optimizer = functools.partial(make_fishleg, seed=seed, **(fishleg or {}))
    rates = ADAM_RATES if adam else ()
    comparison = compare(functools.partial(build, seed), optimizer, train_batches(seed), loss_fn, steps, rates)
    print(comparison.report("GPT-2 (transformers), 2 layers, width 32", steps))
    return comparison


if __name__ == "__main__":
    main(**vars(arguments(__doc__ or "")))
