"""Base classifier trained under Gaussian noise (fresh noise every batch) by a training method: the `training` group
(vrs.modules.training: gaussian, the default, smoothadv, macer, consistency).

The module is built from plain config dicts (network, noise, optimizer, scheduler, data spec) that are
saved as hyper-parameters, so a checkpoint alone rebuilds the network with its normalisation.
"""

from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.strategies import SingleDeviceStrategy
from pytorch_lightning.utilities import rank_zero_info
import torch
import torchmetrics
from hydra.utils import instantiate

from vrs.checkpoint import FORMATS
from vrs.errors import ConfigError
from vrs.modules.guards import NonFiniteLossGuard
from vrs.modules.optim import optimizers_from_config
from vrs.modules.step_graph import CUDAGraphCapture, GraphedStep, make_capturable
from vrs.modules.training import TrainingBatch, build_training, training_config
from vrs.models import build_network
from vrs.smoothing.noise import add_noise
from vrs.smoothing.smoothed import CUDA_GRAPH_MODES
from vrs.utils.config import plain
from vrs.utils import metric_names as names


GRAPH_PRECISIONS = ("32-true", "bf16-mixed", "bf16-true")  # no GradScaler (fp16) and no other plugin in a graph


def portable_optimizer_state(checkpoint: dict) -> None:
    """Store learning rates as floats and `capturable` off: a captured step keeps the rates in device tensors
    and the optimizer in capturable mode (make_capturable), but a checkpoint must load anywhere, eager or
    captured, on any device (a capture turns both on again)."""
    def as_float(v):
        return float(v) if isinstance(v, torch.Tensor) else v

    for state in checkpoint.get("optimizer_states", []):
        for group in state.get("param_groups", []):
            for key in ("lr", "initial_lr"):
                if key in group:
                    group[key] = as_float(group[key])
            if group.get("capturable"):
                group["capturable"] = False
    for state in checkpoint.get("lr_schedulers", []):
        for key in ("base_lrs", "_last_lr"):
            if isinstance(state.get(key), list):
                state[key] = [as_float(v) for v in state[key]]


def callbacks_before_optimizer_step(trainer: pl.Trainer) -> list[str]:
    """Callbacks that act between backward and the optimizer step (e.g. gradient-norm logging): inside one
    graph there is no such moment."""
    base = pl.Callback.on_before_optimizer_step
    return [type(cb).__name__ for cb in trainer.callbacks if type(cb).on_before_optimizer_step is not base]


class NoisyClassifierModule(NonFiniteLossGuard, pl.LightningModule):
    nonfinite_what = "training loss"
    nonfinite_hint = "lower the learning rate, or check the data and noise settings"

    def __init__(self, net: dict, noise: dict, optimizer: dict, data: dict, scheduler: dict | None = None,
                 channels_last: bool | str = "auto", compile: bool | str = False, cuda_graph: bool | str = "auto",
                 training: dict | None = None):
        super().__init__()
        net, noise, optimizer, scheduler, data, training = map(plain, (net, noise, optimizer, scheduler, data,
                                                                       training))
        training = training_config(training)  # None (an old checkpoint): Gaussian augmentation
        self.save_hyperparameters({"net": net, "noise": noise, "optimizer": optimizer, "scheduler": scheduler,
                                   "data": data, "channels_last": channels_last, "compile": compile,
                                   "cuda_graph": cuda_graph, "training": training})
        self.net = build_network(net, data)
        self.noise = instantiate(noise)
        self.training_method = build_training(training)
        self.sigma_grid = self.noise.grid()
        self._set_forward(self.net)
        self._channels_last = False
        self._graphed: GraphedStep | None = None  # the captured training step (module.cuda_graph)
        self._nonfinite: torch.Tensor | None = None  # device-side flag: a non-finite training loss was seen
        nc = data["num_classes"]

        def accuracy():  # validate_args=False: the argument checks read values back from the GPU every batch
            return torchmetrics.Accuracy(task="multiclass", num_classes=nc, validate_args=False)

        self.train_acc = accuracy()
        self.eval_metrics = torch.nn.ModuleDict()
        for stage in ("val", "test"):
            self.eval_metrics[f"{stage}_clean"] = accuracy()
            self.eval_metrics[f"{stage}_noisy"] = accuracy()
            for i, _ in enumerate(self.sigma_grid if len(self.sigma_grid) > 1 else []):
                self.eval_metrics[f"{stage}_sigma{i}"] = accuracy()

    # ---- set-up ------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        cl = self.hparams.channels_last
        if cl is True or (cl == "auto" and self.device.type == "cuda"):
            self.net = self.net.to(memory_format=torch.channels_last)
            self._channels_last = True
        mode = self.hparams.compile
        if mode:
            # True: default inductor; a string is a torch.compile mode ("reduce-overhead" adds CUDA graphs,
            # which pays off for small, launch-bound networks such as CIFAR ResNets).
            self._set_forward(torch.compile(self.net, mode=None if mode is True else mode))
        if stage == "fit" and self._wants_cuda_graph():
            rank_zero_info("module.cuda_graph: each training step (noise, forward, backward, optimizer) "
                           "runs as one CUDA graph after 3 warm-up steps")
            self._graphed = GraphedStep(self._graph_body, self._zero_grad, capture=self.graph_capture,
                                        before_capture=lambda: make_capturable(self.trainer.optimizers[0]))

    graph_capture: type = CUDAGraphCapture  # tests swap in step_graph.CallCapture to run the logic on a CPU

    def _wants_cuda_graph(self) -> bool:
        """module.cuda_graph: true, false, or auto (on where it applies: one CUDA device, no gradient
        accumulation or clipping, bf16 or fp32, a fused optimizer, no torch.compile mode with its own CUDA
        graphs, no callback between backward and the optimizer step). VRS stage 1 takes it as
        `+base_stage.module.cuda_graph=...`."""
        setting = self.hparams.get("cuda_graph", False)
        if setting is False:
            return False
        trainer, mode = self.trainer, self.hparams.compile
        conflicts = [why for bad, why in [
            (self.device.type != "cuda" and self.graph_capture is CUDAGraphCapture, "it needs a CUDA device"),
            (not isinstance(trainer.strategy, SingleDeviceStrategy),
             f"it runs on one device with no distributed strategy (not {type(trainer.strategy).__name__})"),
            (trainer.accumulate_grad_batches != 1, "trainer.accumulate_grad_batches must be 1"),
            (bool(trainer.gradient_clip_val), "gradient clipping (trainer.gradient_clip_val) is not captured"),
            (str(trainer.precision) not in GRAPH_PRECISIONS,
             f"trainer.precision={trainer.precision} is not captured (use one of {', '.join(GRAPH_PRECISIONS)})"),
            (mode in CUDA_GRAPH_MODES, f"module.compile={mode} brings its own CUDA graphs (use true or "
                                       "max-autotune-no-cudagraphs with it)"),
            # Unfused SGD reads a tensor learning rate back on the host; unfused capturable Adam divides by
            # the learning rate (NaN at lr = 0, e.g. the end of a cosine schedule). Fused ones do neither.
            (not self.hparams.optimizer.get("fused"), "it needs a fused optimizer (set optimizer.fused=true)"),
            (self.training_method.graph_conflict() is not None, self.training_method.graph_conflict()),
            *[(True, f"callback {name} uses on_before_optimizer_step, which a captured step does not call")
              for name in callbacks_before_optimizer_step(trainer)],
        ] if bad]
        if conflicts and setting is True:
            raise ConfigError("module.cuda_graph", True, "; ".join(conflicts) + " (or set module.cuda_graph=auto)")
        if conflicts and self.device.type == "cuda":
            rank_zero_info(f"module.cuda_graph=auto: eager training steps ({'; '.join(conflicts)})")
        return not conflicts

    def _set_forward(self, fn) -> None:
        # Bypass nn.Module.__setattr__: the (possibly compiled) alias must not become a second submodule
        # with its own copy of the weights in the state dict.
        object.__setattr__(self, "_forward", fn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self._forward(x)

    # ---- steps -------------------------------------------------------------------------------
    def _method_step(self, x: torch.Tensor, y: torch.Tensor):
        """The training method's output (loss, logits at one noisy copy, terms) on a batch: each image's sigma from
        the noise group, the noise and the loss from the method."""
        sigma = self.noise(x.shape[0], x.device)
        return self.training_method(TrainingBatch(x, y, sigma, self, self.net, self.current_epoch))

    def _noisy_loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self._method_step(x, y)
        return out.logits, out.loss

    def training_step(self, batch, batch_idx):
        x, y = batch
        terms = {}
        if self._graphed is not None:  # forward, backward and optimizer step in one graph replay
            logits, loss = self._graphed(x, y)
            loss = loss.clone()  # the loggers keep it; the next replay overwrites the static tensor
        else:
            out = self._method_step(x, y)
            logits, loss, terms = out.logits, out.loss, out.terms
        self._check_finite(loss)
        self.train_acc(logits, y)
        self.log(names.stage_key(names.TRAIN, names.LOSS), loss)
        for name, value in terms.items():  # the method's terms (macer: train/ce, train/hinge, ...); not when captured
            self.log(names.stage_key(names.TRAIN, name), value)
        self.log(names.stage_key(names.TRAIN, names.ACC), self.train_acc, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def _eval_step(self, batch, stage: str) -> None:
        x, y = batch
        m = self.eval_metrics
        clean = self(x)
        self.log(names.stage_key(stage, names.LOSS), torch.nn.functional.cross_entropy(clean, y), sync_dist=True)
        m[f"{stage}_clean"](clean, y)
        m[f"{stage}_noisy"](self(add_noise(x, self.noise(x.shape[0], x.device))), y)
        self.log(names.stage_key(stage, names.ACC_CLEAN), m[f"{stage}_clean"])
        # val/acc is the accuracy under training noise: what the smoothed classifier is built on.
        self.log(names.stage_key(stage, names.ACC), m[f"{stage}_noisy"], prog_bar=True)
        if len(self.sigma_grid) > 1:
            for i, s in enumerate(self.sigma_grid):
                m[f"{stage}_sigma{i}"](self(add_noise(x, s)), y)
                self.log(names.acc_sigma(stage, s), m[f"{stage}_sigma{i}"])

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, "test")

    # ---- optimisation ------------------------------------------------------------------------
    def configure_optimizers(self):
        return optimizers_from_config(self.hparams.optimizer, self.hparams.scheduler, self.parameters(), self.trainer)

    # With module.cuda_graph the replay in training_step already ran backward and the optimizer step, so
    # Lightning's own calls become no-ops (its step counting, schedulers and logging stay as they are).
    def _graph_body(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Lightning's autocast region is active here; its weight cache must be off while capturing.
        enabled, dtype = torch.is_autocast_enabled(x.device.type), torch.get_autocast_dtype(x.device.type)
        with torch.autocast(x.device.type, dtype=dtype, enabled=enabled, cache_enabled=False):
            logits, loss = self._noisy_loss(x, y)
        loss.backward()
        self.trainer.optimizers[0].step()
        return logits.detach(), loss.detach()

    def _zero_grad(self, set_to_none: bool = True) -> None:
        self.trainer.optimizers[0].zero_grad(set_to_none=set_to_none)

    def backward(self, loss, *args, **kwargs):
        if self._graphed is None:
            super().backward(loss, *args, **kwargs)

    def optimizer_zero_grad(self, epoch, batch_idx, optimizer):
        if self._graphed is None:
            super().optimizer_zero_grad(epoch, batch_idx, optimizer)

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
        if self._graphed is None:
            return super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        optimizer_closure()  # runs training_step, whose replay includes the optimizer step

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        portable_optimizer_state(checkpoint)
        checkpoint["vrs"] = {"format": FORMATS["classifier"], "kind": "classifier", "data": self.hparams.data}
