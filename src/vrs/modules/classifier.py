"""Base classifier trained with Gaussian noise augmentation (fresh noise every batch).

The module is built from plain config dicts (network, noise, optimizer, scheduler, data spec) that are
saved as hyper-parameters, so a checkpoint alone rebuilds the network with its normalisation.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
import torchmetrics
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from vrs.modules.optim import optimizers_from_config
from vrs.modules.guards import NonFiniteLossGuard
from vrs.models import with_normalization
from vrs.smoothing.noise import add_noise

CHECKPOINT_FORMAT = 1


def plain(cfg: Any) -> Any:
    """DictConfig -> plain containers (checkpoints stay loadable with torch.load(weights_only=True))."""
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg


def build_network(net: dict, data: dict) -> torch.nn.Module:
    """[0,1] images -> logits: Normalize(data mean/std) followed by the configured backbone."""
    return with_normalization(instantiate(net), data["mean"], data["std"])


class NoisyClassifierModule(NonFiniteLossGuard, pl.LightningModule):
    nonfinite_what = "training loss"
    nonfinite_hint = "lower the learning rate, or check the data and noise settings"

    def __init__(self, net: dict, noise: dict, optimizer: dict, data: dict, scheduler: dict | None = None,
                 channels_last: bool | str = "auto", compile: bool | str = False):
        super().__init__()
        net, noise, optimizer, scheduler, data = map(plain, (net, noise, optimizer, scheduler, data))
        self.save_hyperparameters({"net": net, "noise": noise, "optimizer": optimizer, "scheduler": scheduler,
                                   "data": data, "channels_last": channels_last, "compile": compile})
        self.net = build_network(net, data)
        self.noise = instantiate(noise)
        self.sigma_grid = self.noise.grid()
        self._set_forward(self.net)
        self._channels_last = False
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

    def _set_forward(self, fn) -> None:
        # Bypass nn.Module.__setattr__: the (possibly compiled) alias must not become a second submodule
        # with its own copy of the weights in the state dict.
        object.__setattr__(self, "_forward", fn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self._forward(x)

    # ---- steps -------------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        x, y = batch
        sigma = self.noise(x.shape[0], x.device)
        logits = self(add_noise(x, sigma))
        loss = torch.nn.functional.cross_entropy(logits, y)
        self._check_finite(loss)
        self.train_acc(logits, y)
        self.log("train/loss", loss)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def _eval_step(self, batch, stage: str) -> None:
        x, y = batch
        m = self.eval_metrics
        clean = self(x)
        self.log(f"{stage}/loss", torch.nn.functional.cross_entropy(clean, y), sync_dist=True)
        m[f"{stage}_clean"](clean, y)
        m[f"{stage}_noisy"](self(add_noise(x, self.noise(x.shape[0], x.device))), y)
        self.log(f"{stage}/acc_clean", m[f"{stage}_clean"])
        # val/acc is the accuracy under training noise: what the smoothed classifier is built on.
        self.log(f"{stage}/acc", m[f"{stage}_noisy"], prog_bar=True)
        if len(self.sigma_grid) > 1:
            for i, s in enumerate(self.sigma_grid):
                m[f"{stage}_sigma{i}"](self(add_noise(x, s)), y)
                self.log(f"{stage}/acc_sigma_{s:g}", m[f"{stage}_sigma{i}"])

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, "test")

    # ---- optimisation ------------------------------------------------------------------------
    def configure_optimizers(self):
        return optimizers_from_config(self.hparams.optimizer, self.hparams.scheduler, self.parameters(), self.trainer)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["vrs"] = {"format": CHECKPOINT_FORMAT, "kind": "classifier", "data": self.hparams.data}
