"""The third-party examples of docs/guide/third_party.md run (a few steps each); those needing an optional
package skip cleanly without it."""

from __future__ import annotations

import warnings

from thirdparty_models import import_optional, load_example


def run(name: str, steps: int = 3):
    example = load_example(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the attention math-kernel notice of the exact Fisher
        comparison = example.main(steps=steps)
    assert set(comparison.adam) == set(example.ADAM_RATES)
    assert all(value == value for value in [*comparison.adam.values(), comparison.fishleg])  # finite, not NaN
    return comparison


def test_the_torchvision_resnet_example_runs():
    run("torchvision_resnet", steps=2)


def test_the_timm_vit_example_runs():
    run("timm_vit")


def test_the_hugging_face_causal_lm_example_runs():
    import_optional("transformers")
    run("hf_causal_lm")


def test_the_lightning_example_runs_with_the_low_rank_product_on_every_step():
    import_optional("lightning")
    example = load_example("lightning_mlp")
    example.BATCH = 8  # rank 8: the low-rank product pays on the first layer (20 -> 64)
    module = example.Classifier("fishleg", example.FISHLEG["lr"])
    optimizer_of = module.configure_optimizers

    used = []

    def counting():
        optimizer = optimizer_of()
        factors = optimizer._capture.factors
        optimizer._capture.factors = lambda gradient: used.append(len(found := factors(gradient))) or found
        return optimizer

    module.configure_optimizers = counting
    example.fit(module, steps=4)
    assert used == [1] * 4  # Lightning's closure zeroes the gradients after the forward pass
    run("lightning_mlp", steps=2)


def test_the_small_cnn_example_runs():
    run("small_cnn")
