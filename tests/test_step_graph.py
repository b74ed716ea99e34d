"""The captured training step (module.cuda_graph, vrs.modules.step_graph).

A real CUDA graph needs a GPU (checked on the H100: docs/performance.md); here `CallCapture` stands in for
the recording, with a replay's semantics (static inputs, outputs written in place, gradients written
afresh), so the bookkeeping around it is checked on the CPU: warm-up, capture, replays, the eager path for
other batch shapes, Lightning's hooks, the learning-rate tensor under a schedule, and checkpoints.
"""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate

from conftest import QUIET, compose_config
from vrs.errors import ConfigError, VRSError
from vrs.modules.step_graph import CallCapture, GraphedStep, make_capturable


def sgd_problem(seed: int = 0):
    torch.manual_seed(seed)
    net = torch.nn.Linear(5, 3)
    opt = make_capturable(torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9))

    def body(x, y):
        loss = torch.nn.functional.cross_entropy(net(x + 0.1 * torch.randn_like(x)), y)
        loss.backward()
        opt.step()
        return (loss.detach(),)

    return net, opt, body


def batches(sizes):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(b, 5, generator=g), torch.randint(0, 3, (b,), generator=g)) for b in sizes]


def test_graphed_step_matches_plain_steps_across_warmup_capture_replay_and_odd_shapes():
    data = batches([8, 8, 8, 8, 8, 3, 8, 8, 3])  # 3: the last, smaller batch of an epoch runs eagerly
    net_a, opt_a, body_a = sgd_problem()
    torch.manual_seed(5)
    plain = []
    for x, y in data:
        opt_a.zero_grad()
        plain.append(body_a(x, y)[0].item())
    net_b, opt_b, body_b = sgd_problem()
    torch.manual_seed(5)
    step = GraphedStep(body_b, opt_b.zero_grad, warmup=2, capture=CallCapture)
    graphed = [step(x, y)[0].item() for x, y in data]
    assert step.eager_steps == 2 + 2 and step.replays == 5  # 2 warm-up, capture (replayed), 4 more, 2 odd
    assert graphed == pytest.approx(plain, abs=1e-6)
    for a, b in zip(net_a.parameters(), net_b.parameters()):
        torch.testing.assert_close(a, b)


def test_replays_reuse_static_outputs_and_copy_inputs():
    net, opt, body = sgd_problem()
    step = GraphedStep(body, opt.zero_grad, warmup=0, capture=CallCapture)
    (x1, y1), (x2, y2) = batches([4, 4])
    out1 = step(x1, y1)[0]
    out2 = step(x2, y2)[0]
    assert out1 is out2  # one static tensor, overwritten by each replay
    torch.testing.assert_close(step.static_inputs[0], x2)


def test_make_capturable_puts_the_learning_rate_in_a_tensor_that_schedulers_update_in_place():
    p = torch.nn.Parameter(torch.zeros(2))
    opt = make_capturable(torch.optim.AdamW([p], lr=0.5))
    lr = opt.param_groups[0]["lr"]
    assert isinstance(lr, torch.Tensor)
    assert opt.param_groups[0]["capturable"] is False  # a CUDA-only mode; True on a GPU
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.1)
    p.grad = torch.ones(2)
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] is lr and lr.item() == pytest.approx(0.05)


def train(tmp_path, cuda_graph: str, capture=None, *extra: str, ckpt_path=None):
    cfg = compose_config(*QUIET, "data=digits", "model.width=8", "model.hidden=32", "noise=fixed", "noise.sigma=0.25",
                         "trainer.max_epochs=2", "scheduler=cosine", "scheduler.interval=step", "data.batch_size=64",
                         f"module.cuda_graph={cuda_graph}", "seed=0", *extra, output_dir=tmp_path)
    pl.seed_everything(0, verbose=False)
    dm = instantiate(cfg.data)
    dm.setup()
    module = instantiate(cfg.module, data=dm.spec.to_dict())
    if capture is not None:
        module.graph_capture = capture
    trainer = instantiate(cfg.trainer, logger=False, callbacks=[pl.callbacks.ModelCheckpoint(dirpath=tmp_path,
                          save_last=True)], enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    return module, trainer


def test_lightning_training_with_the_captured_step_equals_eager_training(tmp_path):
    eager, t_eager = train(tmp_path / "eager", "false")
    graphed, t_graphed = train(tmp_path / "graphed", "true", CallCapture)
    assert eager._graphed is None and graphed._graphed is not None
    assert graphed._graphed.replays > 0 and graphed._graphed.eager_steps > 3  # warm-up + each epoch's last batch
    assert t_graphed.global_step == t_eager.global_step  # Lightning still counts the optimizer steps
    for a, b in zip(eager.parameters(), graphed.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    lr = t_graphed.optimizers[0].param_groups[0]["lr"]
    assert isinstance(lr, torch.Tensor)  # the schedule reached the captured step through the tensor
    assert lr.item() == pytest.approx(t_eager.optimizers[0].param_groups[0]["lr"], rel=1e-5)
    assert t_graphed.callback_metrics["train/acc"] == pytest.approx(t_eager.callback_metrics["train/acc"].item())

    ckpt = torch.load(tmp_path / "graphed" / "last.ckpt", map_location="cpu", weights_only=False)
    assert isinstance(ckpt["optimizer_states"][0]["param_groups"][0]["lr"], float)  # loads anywhere
    resumed, t_resumed = train(tmp_path / "resumed", "true", CallCapture, "trainer.max_epochs=3",
                               ckpt_path=tmp_path / "graphed" / "last.ckpt")
    assert t_resumed.current_epoch == 3 and resumed._graphed.replays > 0


def test_cuda_graph_true_without_a_gpu_is_a_clear_error_and_auto_falls_back(tmp_path):
    with pytest.raises(ConfigError, match=r"module.cuda_graph=True.*needs a CUDA device"):
        train(tmp_path / "true", "true")
    module, _ = train(tmp_path / "auto", "auto", None, "trainer.max_epochs=1")
    assert module._graphed is None


@pytest.mark.parametrize("override, reason", [
    ("+trainer.accumulate_grad_batches=2", "accumulate_grad_batches"),
    ("+trainer.gradient_clip_val=1.0", "gradient_clip_val"),
    ("module.compile=reduce-overhead", "own CUDA graphs"),
    ("optimizer.fused=false", "optimizer.fused=true"),
    ("trainer.precision=64-true", "trainer.precision=64-true is not captured"),
    ("+trainer.strategy=ddp", "not DDPStrategy"),
    ("training=smoothadv", "training=smoothadv runs a PGD attack inside each step"),
])
def test_cuda_graph_true_names_what_conflicts(tmp_path, override, reason):
    with pytest.raises(ConfigError, match=reason):
        train(tmp_path, "true", CallCapture, override)


def test_adamw_is_captured_when_fused(tmp_path):
    module, _ = train(tmp_path, "true", CallCapture, "optimizer=adamw", "trainer.max_epochs=1")
    assert module._graphed.replays > 0


def test_a_callback_between_backward_and_step_is_refused_or_keeps_steps_eager(tmp_path):
    class GradNorm(pl.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):  # e.g. logs gradient norms
            self.norms = [p.grad.norm() for p in pl_module.parameters() if p.grad is not None]

    cfg = compose_config(*QUIET, "data=digits", "model.width=8", "trainer.max_epochs=1", output_dir=tmp_path)
    dm = instantiate(cfg.data)
    dm.setup()
    for setting in (True, "auto"):
        module = instantiate(cfg.module, data=dm.spec.to_dict(), cuda_graph=setting)
        module.graph_capture = CallCapture
        trainer = instantiate(cfg.trainer, logger=False, callbacks=[GradNorm()], enable_checkpointing=False)
        if setting is True:
            with pytest.raises(ConfigError, match="GradNorm uses on_before_optimizer_step"):
                trainer.fit(module, datamodule=dm)
        else:
            trainer.fit(module, datamodule=dm)
            assert module._graphed is None


def test_a_step_that_cannot_be_captured_is_one_clear_error():
    def capture_fails(body, inputs, zero_grad):
        raise RuntimeError("operation not permitted when stream is capturing")

    step = GraphedStep(lambda x: (x,), lambda set_to_none: None, warmup=0, capture=capture_fails)
    with pytest.raises(VRSError, match="could not be captured.*module.cuda_graph=false"):
        step(torch.zeros(2))


# ---- on a GPU (skipped without one; run on the H100 for docs/performance.md) ----------------------------
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
def test_a_real_cuda_graph_replays_the_same_steps_as_eager_code():
    def problem():
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)).cuda()
        opt = make_capturable(torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, fused=True))

        def body(x, y):
            loss = torch.nn.functional.cross_entropy(net(x), y)
            loss.backward()
            opt.step()
            return (loss.detach(),)
        return net, opt, body

    data = [(x.cuda(), y.cuda()) for x, y in batches([8, 8, 8, 8, 8, 3, 8, 8])]
    net_a, opt_a, body_a = problem()
    plain = []
    for x, y in data:
        opt_a.zero_grad()
        plain.append(body_a(x, y)[0].item())
    net_b, opt_b, body_b = problem()
    step = GraphedStep(body_b, opt_b.zero_grad, warmup=2)
    graphed = [step(x, y)[0].item() for x, y in data]
    assert step.replays == 5 and isinstance(step.captured.graph, torch.cuda.CUDAGraph)
    assert graphed == pytest.approx(plain, rel=1e-5, abs=1e-6)
    for a, b in zip(net_a.parameters(), net_b.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@cuda
def test_each_replay_draws_fresh_noise_from_the_seeded_stream():
    def noisy_sum(seed):
        torch.manual_seed(seed)
        w = torch.nn.Parameter(torch.ones(4, device="cuda"))
        opt = make_capturable(torch.optim.SGD([w], lr=0.0, fused=True))

        def body(x):
            out = (w * (x + torch.randn_like(x))).sum()
            out.backward()
            opt.step()
            return (out.detach(),)
        step = GraphedStep(body, opt.zero_grad, warmup=1)
        x = torch.zeros(4, device="cuda")
        return [step(x)[0].item() for _ in range(5)]

    first, again, other = noisy_sum(0), noisy_sum(0), noisy_sum(1)
    assert len(set(first)) == 5  # fresh noise on every replay
    assert first == again and first != other  # from the seeded generator


@cuda
def test_lightning_training_with_a_real_cuda_graph_learns_like_eager(tmp_path):
    gpu = ["trainer=gpu", "trainer.precision=bf16-mixed", "trainer.max_epochs=4"]
    eager, t_eager = train(tmp_path / "eager", "false", None, *gpu)
    graphed, t_graphed = train(tmp_path / "graphed", "true", None, *gpu)
    assert graphed._graphed.replays > 0 and isinstance(graphed._graphed.captured.graph, torch.cuda.CUDAGraph)
    assert t_graphed.global_step == t_eager.global_step
    lr = t_graphed.optimizers[0].param_groups[0]["lr"]
    assert lr.item() == pytest.approx(t_eager.optimizers[0].param_groups[0]["lr"], rel=1e-4)
    acc_e, acc_g = (t.callback_metrics["train/acc"].item() for t in (t_eager, t_graphed))
    assert acc_g > 0.5 and abs(acc_g - acc_e) < 0.1, (acc_e, acc_g)


@cuda
@pytest.mark.parametrize("optimizer, first", [("optimizer=sgd", "true"), ("optimizer=adamw", "true"),
                                              ("optimizer=adamw", "false")])
def test_a_real_cuda_graph_resumes_from_a_checkpoint(tmp_path, optimizer, first):
    """Graph-saved and eager-saved checkpoints resume into a captured step (and store portable settings)."""
    gpu = ["trainer=gpu", "trainer.precision=bf16-mixed", optimizer]
    _, one = train(tmp_path / "first", first, None, *gpu, "trainer.max_epochs=2")
    ckpt = tmp_path / "first" / "last.ckpt"
    group = torch.load(ckpt, map_location="cpu", weights_only=False)["optimizer_states"][0]["param_groups"][0]
    assert isinstance(group["lr"], float) and not group.get("capturable", False)
    resumed, again = train(tmp_path / "resumed", "true", None, *gpu, "trainer.max_epochs=3", ckpt_path=ckpt)
    assert again.current_epoch == 3 and again.global_step == one.global_step * 3 // 2
    assert resumed._graphed.replays > 0
    assert isinstance(again.optimizers[0].param_groups[0]["lr"], torch.Tensor)  # a tensor again for the graph
    assert all(torch.isfinite(p).all() for p in resumed.parameters())
