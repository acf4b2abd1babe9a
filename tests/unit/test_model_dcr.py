"""DCR: the real-feature queue, the momentum encoder, the modes, the loss, checkpoints, learning."""

from __future__ import annotations

import math
import time

import pytest
import torch
import torch.nn.functional as F

from forgesweep.errors import ConfigError
from forgesweep.losses import supervised_contrastive
from forgesweep.models import DetectorOutput, build_model
from forgesweep.models.dcr import DCR, DCROutput, DifferenceAttention
from forgesweep.models.dcr_memory import (
    RealFeatureQueue,
    gather_from_all_ranks,
    momentum_copy,
    momentum_update,
)
from forgesweep.train.checkpoint import load_model_from_checkpoint, save_stage_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _tiny(**params) -> DCR:
    torch.manual_seed(0)
    return build_model("dcr", {"preset": "tiny", **params})


def _train_steps(model: DCR, steps: int, batch: int = 8, seed: int = 0) -> list[DCROutput]:
    """A few steps the way the training loop runs them (forward, loss, step, after-step hook)."""
    gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    outs = []
    for _ in range(steps):
        images = model.example_input(batch, gen)
        labels = torch.arange(batch) % 2
        optimizer.zero_grad()
        out = model(images)
        sum(model.task_loss(out, {"labels": labels}).values()).backward()
        optimizer.step()
        model.after_optimizer_step()
        outs.append(out)
    return outs


# --------------------------------------------------------------------------- the queue


def test_queue_wraps_around_instead_of_dropping_keys():
    queue = RealFeatureQueue(size=5, dim=2)
    first = torch.tensor([[1.0, 0], [0, 2.0], [3.0, 3.0]])
    second = torch.tensor([[-1.0, 0], [0, -1.0], [2.0, -2.0], [-5.0, 5.0]])
    queue.enqueue(first)
    assert len(queue) == 3 and int(queue.ptr) == 3
    queue.enqueue(second)  # runs past the end: two rows at 3, 4, then two at 0, 1
    expected = F.normalize(torch.stack([second[2], second[3], first[2], second[0], second[1]]), dim=1)
    assert torch.allclose(queue.features, expected)
    assert int(queue.ptr) == 2 and len(queue) == 5
    assert torch.allclose(queue.features.norm(dim=1), torch.ones(5))


def test_queue_keeps_the_newest_keys_of_an_oversized_batch():
    queue = RealFeatureQueue(size=3, dim=2)
    keys = torch.tensor([[1.0, 0], [0, 1.0], [1.0, 1.0], [-1.0, 0], [0, -1.0]])
    queue.enqueue(keys)
    assert len(queue) == 3 and int(queue.ptr) == 0
    assert torch.allclose(queue.valid(), F.normalize(keys[2:], dim=1))
    queue.enqueue(torch.zeros(0, 2))  # an all-fake batch changes nothing
    assert len(queue) == 3 and int(queue.ptr) == 0


def test_queue_retrieves_the_most_similar_row_per_query():
    queue = RealFeatureQueue(size=8, dim=3)
    queries = torch.tensor([[0.9, 0.1, 0.0], [0.0, -1.0, 0.2]])
    assert torch.equal(queue.nearest(queries), torch.zeros(2, 3))  # empty: the origin
    rows = torch.eye(3)
    queue.enqueue(torch.cat([rows, -rows]))
    got = queue.nearest(queries)
    assert torch.equal(got, torch.stack([rows[0], -rows[1]]))
    assert torch.equal(queue.nearest(queries[1:]), got[1:])
    drawn = queue.sample(50, torch.Generator().manual_seed(0))
    assert all(any(torch.equal(d, r) for r in queue.valid()) for d in drawn)


def test_queue_pointer_and_count_are_saved_buffers():
    model = _tiny()
    state = model.state_dict()
    assert {"bank.features", "bank.ptr", "bank.count"} <= set(state)
    assert state["bank.features"].shape == (model.params.bank_size, model.params.embed_dim)
    assert not any(name.startswith("bank.") for name, _ in model.named_parameters())


def test_gather_is_the_identity_without_a_process_group():
    keys = torch.randn(3, 4)
    assert gather_from_all_ranks(keys) is keys


def _gather_worker(rank: int, store_path: str, result_path: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=2)
    try:
        # Rank 0 saw 1 real in its batch, rank 1 saw 3: both queues must receive all 4.
        keys = torch.tensor([[1.0, 0.0]]) if rank == 0 else torch.tensor([[0.0, 1.0], [1.0, 1.0], [-1.0, 1.0]])
        queue = RealFeatureQueue(size=8, dim=2)
        queue.enqueue(gather_from_all_ranks(keys))
        torch.save(queue.features.clone(), f"{result_path}.{rank}")
    finally:
        dist.destroy_process_group()


def test_every_rank_enqueues_the_keys_of_all_ranks(tmp_path):
    import torch.multiprocessing as mp

    # fork: the children inherit the imported modules, so the test stays fast.
    ctx = mp.start_processes(_gather_worker, args=(str(tmp_path / "store"), str(tmp_path / "queue")),
                             nprocs=2, join=False, start_method="fork")
    deadline = time.monotonic() + 60
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for proc in ctx.processes:
                proc.kill()
            pytest.fail("gloo ranks did not finish within 60 s")
    q0, q1 = (torch.load(tmp_path / f"queue.{r}", weights_only=True) for r in (0, 1))
    expected = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 1.0]]), dim=1)
    assert torch.equal(q0, q1)
    assert torch.allclose(q0[:4], expected) and not q0[4:].any()


# --------------------------------------------------------------------------- momentum encoder


def test_momentum_update_averages_parameters_and_batchnorm_statistics():
    torch.manual_seed(0)
    query = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    key = momentum_copy(query)
    assert not list(key.parameters()) and not key.training
    with torch.no_grad():
        query[0].weight.add_(1.0)
    query(torch.randn(6, 3))  # moves the query's running statistics and batch counter
    before = {k: v.clone() for k, v in key.state_dict().items()}
    assert set(before) == set(query.state_dict())
    momentum_update(key, query, 0.9)
    for name, value in key.state_dict().items():
        if value.is_floating_point():
            assert torch.allclose(value, 0.9 * before[name] + 0.1 * query.state_dict()[name]), name
        else:
            assert torch.equal(value, query.state_dict()[name]), name
    assert not torch.equal(key.state_dict()["0.weight"], before["0.weight"])
    with pytest.raises(ValueError, match="not a copy"):
        momentum_update(torch.nn.Linear(3, 4), query, 0.9)


def test_key_encoder_is_untrained_and_follows_the_encoder_after_each_step():
    model = _tiny()
    assert not list(model.key_encoder.parameters())  # weights are buffers: no optimiser sees them
    keys = dict(model.key_encoder.named_buffers())
    names = [n for n, _ in model.encoder.named_parameters()]
    assert names and all(f"key_encoder.{n}" in model.state_dict() for n in names)
    for n, q in model.encoder.named_parameters():
        assert torch.equal(q, keys[n])  # starts as an exact copy
    model.train()
    assert not model.key_encoder.training  # always eval (its keys match eval-mode queries)
    old_key = {n: keys[n].clone() for n in names}
    _train_steps(model, 1)
    m = model.params.momentum
    moved = 0
    for n, q in model.encoder.named_parameters():
        assert torch.allclose(keys[n], m * old_key[n] + (1 - m) * q, atol=1e-7), n
        moved += int(not torch.equal(keys[n], old_key[n]))
    assert moved > 0


# --------------------------------------------------------------------------- modes


def test_a_training_step_enqueues_exactly_the_real_keys():
    model = _tiny()
    images = model.example_input(6, torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 1, 1, 0, 1, 0])
    model.train()
    out = model(images)
    assert isinstance(out, DCROutput) and out.keys.shape == (6, model.params.embed_dim)
    model.task_loss(out, {"labels": labels})
    assert len(model.bank) == 0  # nothing is written before the optimiser step
    model.after_optimizer_step()
    assert len(model.bank) == 3
    assert torch.allclose(model.bank.valid(), out.keys[labels == 0])
    model.after_optimizer_step()  # no new batch: nothing more is enqueued
    assert len(model.bank) == 3


def test_single_mode_compares_with_the_nearest_real_prototype():
    model = _tiny().eval()
    gen = torch.Generator().manual_seed(2)
    reals, others = model.example_input(4, gen), model.example_input(3, gen)
    keys = model.update_memory(reals)
    assert len(model.bank) == 4
    with torch.no_grad():
        own = model(reals)
        other = model(others)
    # The key encoder is still an exact copy, so each real retrieves its own key: no difference.
    assert own.features["difference"].abs().max() < 1e-4
    z = F.normalize(other.features["feature"], dim=1)
    nearest = keys[(z @ keys.T).argmax(dim=1)]
    expected = (z - nearest).abs() * math.sqrt(model.params.embed_dim)
    assert torch.allclose(other.features["difference"], expected, atol=1e-5)
    assert other.keys is None  # no momentum pass at inference


@pytest.mark.parametrize("partner", ["nearest", "random"])
def test_pair_mode_pairs_every_sample_with_a_bank_real(partner):
    model = _tiny(pair_partner=partner)
    model.bank.enqueue(torch.randn(3, model.params.embed_dim, generator=torch.Generator().manual_seed(3)))
    bank = model.bank.valid()
    model.train()
    torch.manual_seed(0)
    out = model(model.example_input(16, torch.Generator().manual_seed(4)))
    z = F.normalize(out.features["feature"].detach(), dim=1)
    candidates = (z[:, None, :] - bank[None]).abs() * math.sqrt(model.params.embed_dim)  # B x 3 x D
    match = (candidates - out.features["difference"].detach()[:, None, :]).abs().amax(dim=2) < 1e-5
    assert match.any(dim=1).all()  # every partner is a bank row
    chosen = match.float().argmax(dim=1)
    if partner == "nearest":
        assert torch.equal(chosen, (z @ bank.T).argmax(dim=1))
    else:
        assert len(set(chosen.tolist())) > 1


def test_difference_attention_reads_the_difference_and_adds_back_to_the_feature():
    torch.manual_seed(0)
    block = DifferenceAttention(dim=16, tokens=4, heads=2).eval()
    feature, d1, d2 = torch.randn(3, 16), torch.randn(3, 16), torch.randn(3, 16)
    out1, out2 = block(feature, d1), block(feature, d2)
    assert out1.shape == (3, 16) and not torch.allclose(out1, out2)
    # Softmax over 4 difference tokens: permuting the tokens of d changes the result (the
    # seed's one-token attention could not tell).
    permuted = d1.view(3, 4, 4)[:, [1, 0, 3, 2]].reshape(3, 16)
    assert not torch.allclose(block(feature, permuted), out1)
    with torch.no_grad():
        block.attn.out_proj.weight.zero_()
        block.attn.out_proj.bias.zero_()
    assert torch.equal(block(feature, d1), feature)  # what is added is the attention's output


def test_anomaly_score_is_a_probability_per_sample():
    model = _tiny().eval()
    with torch.no_grad():
        out = model(model.example_input(5))
    score = out.anomaly()
    assert score.shape == (5,) and ((score > 0) & (score < 1)).all()


# --------------------------------------------------------------------------- loss


def test_task_loss_is_bce_plus_anomaly_plus_supcon_against_the_queue():
    model = _tiny()
    model.bank.enqueue(torch.randn(5, model.params.embed_dim))
    labels = torch.tensor([0, 1, 0, 1])
    model.train()
    out = model(model.example_input(4))
    terms = model.task_loss(out, {"labels": labels})
    assert set(terms) == {"bce", "anomaly", "contrastive"}
    p = model.params
    assert torch.allclose(terms["bce"], F.binary_cross_entropy_with_logits(out.logits, labels.float()))
    z = F.normalize(out.features["feature"], dim=1)
    contrast = torch.cat([out.keys, model.bank.valid()])
    expected = supervised_contrastive(z, labels, p.temperature, contrast=contrast,
                                      contrast_labels=torch.cat([labels, torch.zeros(5, dtype=torch.long)]))
    assert torch.allclose(terms["contrastive"], p.w_contrastive * expected)
    assert torch.allclose(terms["anomaly"], F.binary_cross_entropy_with_logits(
        out.features["anomaly_logit"].squeeze(1), labels.float()))


def test_zero_weights_drop_terms_and_plain_outputs_do_not_feed_the_queue():
    model = _tiny(w_anomaly=0.0, w_contrastive=0.0)
    model.train()
    out = model(model.example_input(4))
    assert set(model.task_loss(out, {"labels": torch.tensor([0, 0, 1, 1])})) == {"bce"}
    # A strategy may pass a plain DetectorOutput (e.g. a subset of rows): no keys, no enqueue.
    model = _tiny()
    model.train()
    out = model(model.example_input(4))
    plain = DetectorOutput(logits=out.logits, features=out.features, embedding=out.embedding)
    terms = model.task_loss(plain, {"labels": torch.tensor([0, 0, 1, 1])})
    assert set(terms) == {"bce", "anomaly", "contrastive"} and all(torch.isfinite(t) for t in terms.values())
    model.after_optimizer_step()
    assert len(model.bank) == 0


# --------------------------------------------------------------------------- sizes, frozen parts, config


def test_full_preset_has_a_resnet50_backbone():
    with torch.device("meta"):
        model = build_model("dcr", {"preset": "full"})
    backbone = sum(p.numel() for p in model.encoder.backbone.parameters())
    assert abs(backbone - 23.5e6) / 23.5e6 < 0.01, backbone  # ResNet-50 without its classifier
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == sum(p.numel() for p in model.parameters())  # nothing frozen with ResNet
    encoder = dict(model.encoder.named_parameters())
    keys = dict(model.key_encoder.named_buffers())
    assert all(keys[n].shape == p.shape for n, p in encoder.items())  # the momentum copy
    assert model.feature_names()[:4] == ["stage1", "stage2", "stage3", "stage4"]


def test_frozen_clip_tower_is_untouched_by_an_optimiser_step():
    model = _tiny(preset="clip_tiny")
    assert model.frozen_modules() == [model.clip]
    frozen = {n: p.clone() for n, p in model.clip.named_parameters()}
    assert all(not p.requires_grad for p in model.clip.parameters())
    model.train()
    assert not model.clip.training
    _train_steps(model, 2)
    assert all(torch.equal(p, frozen[n]) for n, p in model.clip.named_parameters())
    assert len(model.bank) > 0
    assert model.feature_names()[0] == "clip"


def test_pretrained_backbone_loads_from_a_local_directory(tmp_path):
    from transformers import ResNetConfig, ResNetModel

    torch.manual_seed(5)
    saved = ResNetModel(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1],
                                     layer_type="basic"))
    saved.save_pretrained(tmp_path / "resnet")
    model = _tiny(pretrained=True, source=str(tmp_path / "resnet"))
    for (name, p), q in zip(model.encoder.backbone.named_parameters(), saved.parameters()):
        assert torch.equal(p, q), name
    with pytest.raises(ConfigError, match="model.source"):
        _tiny(pretrained=True, source=str(tmp_path / "missing"))


@pytest.mark.parametrize("params, field", [
    ({"attention_tokens": 5}, "model.attention_tokens"),
    ({"attention_heads": 3}, "model.attention_heads"),
    ({"resnet_widths": [8, 16]}, "model.resnet_widths"),
    ({"momentum": 1.0}, "model.momentum"),
    ({"bank_size": 0}, "model.bank_size"),
    ({"temperature": 0.0}, "model.temperature"),
    ({"pair_partner": "farthest"}, "model.pair_partner"),
    ({"backbone": "vit"}, "model.backbone"),
    ({"pretrained": True}, "model.source"),
    ({"clip_heads": 3}, "model.clip_heads"),
    ({"bank": 64}, "model.bank"),
])
def test_bad_parameter_is_a_config_error_naming_it(params, field):
    with pytest.raises(ConfigError) as info:
        build_model("dcr", {"preset": "tiny", **params})
    assert field in str(info.value) and "\n" not in str(info.value)


# --------------------------------------------------------------------------- checkpoints


def test_single_mode_inference_works_from_a_checkpoint_alone(tmp_path):
    model = _tiny()
    _train_steps(model, 4)
    assert len(model.bank) == 16
    state = {"stage": 1, "config": {"model": {"name": "dcr", "preset": "tiny"}}}
    save_stage_checkpoint(tmp_path / "ckpt", model, state)
    loaded, _ = load_model_from_checkpoint(tmp_path / "ckpt")
    assert not loaded.training
    assert torch.equal(loaded.bank.features, model.bank.features) and int(loaded.bank.ptr) == int(model.bank.ptr)
    images = model.example_input(5, torch.Generator().manual_seed(9))
    model.eval()
    with torch.no_grad():
        a, b = model(images), loaded(images)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.anomaly(), b.anomaly())
    for name in a.features:
        assert torch.equal(a.features[name], b.features[name]), name
    # The bank is what single mode compares with: without it the same weights answer differently.
    weights_only = {k: v for k, v in model.state_dict().items() if not k.startswith("bank.")}
    fresh = _tiny()
    fresh.load_state_dict(weights_only, strict=False)
    with torch.no_grad():
        assert not torch.allclose(fresh.eval()(images).features["difference"], a.features["difference"])


# --------------------------------------------------------------------------- learning


def test_dcr_tiny_learns_deepfakes(train_one_stage):
    began = time.perf_counter()
    acc = train_one_stage({"name": "dcr", "preset": "tiny"}, epochs_per_task=4)
    print(f"dcr tiny: ACC {acc.get(0, 0):.3f} in {time.perf_counter() - began:.1f} s")
    assert acc.get(0, 0) >= 0.75  # chance is 0.5
