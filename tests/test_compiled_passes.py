"""actor.use_torch_compile: each decoder layer compiled (torchtune's regional compile), the math unchanged."""

from __future__ import annotations

import pytest


@pytest.mark.slow
def test_compiled_layers_give_the_eager_log_probs_and_gradients(tmp_path, tiny_model_dir):
    """The compiled training passes return the eager log-probs, entropies and LoRA gradients, for the
    policy and for the reference (the adapter switched off), and keep the parameter names; the hf
    engine sampling from the policy itself (rollout.dtype float32) stays eager."""
    import torch

    from tunecli.config.io import recipe_from_dict
    from tunecli.trainer.distributed import decoder_layers
    from tunecli.trainer.loop import Trainer
    from tunecli.trainer.rollout import Rollout, SamplingSettings

    prompts = [[1, 5, 6, 7], [1, 9, 10, 11, 12, 13]]
    rollout = Rollout(prompt_ids=[p for p in prompts for _ in range(3)],
                      response_ids=[[4], [4, 5, 6], [7, 8], [9, 9, 9, 2], [3], [5, 6]], finished=[True] * 6, group_size=3)
    results = {}
    for compiled in (False, True):
        recipe = recipe_from_dict({"model": {"path": str(tiny_model_dir), "lora_rank": 4},
                                   "rollout": {"n": 3, "dtype": "float32"}, "actor": {"compute_dtype": "float32", "use_torch_compile": compiled},
                                   "trainer": {"default_local_dir": str(tmp_path / f"run-{compiled}")}})
        trainer = Trainer(recipe, resume=False)
        trainer.setup()
        try:
            model = trainer.policy.model
            layers = decoder_layers(model)
            assert layers and all((layer._compiled_call_impl is not None) == compiled for layer in layers)
            assert not any("_orig_mod" in name for name in model.state_dict())  # checkpoints and the sync see the same names
            torch.manual_seed(0)
            params = trainer.policy.trainable_parameters()
            for p in params:
                torch.nn.init.normal_(p, std=0.05)  # LoRA B starts at zero: give the adapter a real effect
            torch._dynamo.utils.counters.clear()
            scores = trainer.forward_pass(model, rollout, list(range(6)), entropy=True, entropy_grad=True)
            logp, ent = scores.logp * scores.mask, scores.entropy * scores.mask
            grads = torch.autograd.grad(logp.sum() + ent.sum(), params)
            with torch.no_grad(), trainer.policy.reference() as reference:
                ref = trainer.forward_pass(reference, rollout, list(range(6)), entropy=False).logp * scores.mask
            graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
            assert (graphs > 0) == compiled  # dynamo really ran the layers, or really did not
            trainer.engine.generate([[1, 5, 6, 7]], SamplingSettings(n=2, temperature=1.0, max_new_tokens=4, seed=0))
            assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs  # decoding compiled nothing
            results[compiled] = (logp.detach(), ent.detach(), grads, ref)
        finally:
            trainer.cleanup()
    (logp, ent, grads, ref), (logp_c, ent_c, grads_c, ref_c) = results[False], results[True]
    assert torch.allclose(logp, logp_c, atol=1e-5) and torch.allclose(ent, ent_c, atol=1e-5)
    assert torch.allclose(ref, ref_c, atol=1e-5) and not torch.allclose(ref, logp, atol=1e-3)
    for a, b in zip(grads, grads_c, strict=True):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)


def test_verl_use_torch_compile_is_honoured_and_does_not_block_a_resume():
    from tunecli.config.io import dump_recipe, recipe_from_dict
    from tunecli.config.verl_keys import map_verl_override
    from tunecli.trainer.checkpoint import math_differences

    mapped = map_verl_override("actor_rollout_ref.actor.use_torch_compile", "True")
    assert mapped.sets == {"actor.use_torch_compile": "True"}
    assert recipe_from_dict({"actor": {"use_torch_compile": "True"}}).actor.use_torch_compile is True
    assert recipe_from_dict({}).actor.use_torch_compile is False  # compiling costs a minute at start on a CPU: opt in
    saved = dump_recipe(recipe_from_dict({}))
    assert math_differences(saved, dump_recipe(recipe_from_dict({}, ["actor.use_torch_compile=true"]))) == []
