"""The period engine: a PyTorch training loop that runs in periods of N forward passes.

Per period: the controller decides values → they are set in place on the regularizer modules →
N forward/backward passes (Adam, weight decay 1e-4 by default) accumulating train loss and
macro-F1 on the device → a few random validation mini-batches → the controller observes the
record. Model-level regularizers (``where: model``: penalties, max-norm, weight EWA, batch
augmentation) are called as hooks around those passes (see ``regularizers/model_level.py``). When an
epoch ends, the full validation and test sets are evaluated (independent of the
controller). ``state_dict``/``load_state_dict`` capture everything (model, optimizer, controller,
data order, RNG states, period index): a run restored at period k continues bit-for-bit on CPU.

**Evaluation convention** (one for every arm): an evaluation sees the network as it is being
trained at that moment. An epoch end can fall mid-period; the noise in force then acts in
evaluation too — a sign flip whose flag is on (``sign_flip``'s ``apply_in_eval``, default true)
and AutoReLU with a negative ``w`` (its ``apply_in_eval``) — as the noise-injection paper's
validation F1, which "dropped drastically" while noise was injected (§4.3, Fig. 4). PFREWA is
evaluated on the averaged weights ``α·W + (1−α)·W_pre`` (``WeightEWA.eval_start``), as a period
end would leave them. Each epoch-end evaluation logs, per regularizer group that has one, its
state as evaluated (``eval_state/<group>``: 1 = the flip acted) and, with weight penalties,
``full_val_penalty`` (Keras' ``val_loss`` = ``full_val_loss`` + it).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import TensorDataset

from raytune_periodic.controllers import Controller
from raytune_periodic.data._base import DataSplits
from raytune_periodic.errors import ConfigError
from raytune_periodic.records import STATUS_DIVERGED, STATUS_OK, PeriodRecord, PeriodState
from raytune_periodic.regularizers import RegularizerSet
from raytune_periodic.training.batching import in_memory, iterate_eval, make_batches
from raytune_periodic.training.device import check_options, setup_device
from raytune_periodic.training.metrics import confusion_update, macro_f1
from raytune_periodic.validation import integer, number

LossTerm = Callable[[nn.Module], torch.Tensor]


@dataclass
class TrainOptions:
    """Options of one training run (the paper's §4.1 defaults: Adam, lr 1e-3, wd 1e-4, bs 64)."""

    period_length: int = 20  #: forward passes per period
    periods: int = 50  #: periods in the run (the budget unit)
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    val_batches: int = 2  #: random validation mini-batches evaluated at each period's end
    #: at least this many validation samples per class behind each period's val metrics (the
    #: reward of a learning controller): more mini-batches than ``val_batches`` when needed
    #: (CIFAR-100 at batch 64: 16 batches); 0 turns the floor off
    val_samples_per_class: int = 10
    #: size of a fixed, seeded training subset evaluated in eval mode at each period's end
    #: (``train_eval_f1``, the paper's train F1; the faithful ``gap`` reward needs it): 0 = off,
    #: -1 = as many samples as the period's validation mini-batches
    train_eval_samples: int = 0
    eval_batch_size: int = 512  #: batch size of full validation/test passes
    eval_every_epochs: int = 1  #: full validation + test every k epoch ends (0: never)
    device: str = "auto"  #: "auto" (CUDA if present), "cpu", "cuda", "cuda:1"
    #: mixed precision: auto = on CUDA (bfloat16 where supported, else float16 + GradScaler),
    #: off on the CPU (true there: bfloat16); this and the next three: ``training/device.py``
    amp: bool | str = "auto"
    channels_last: bool | str = "auto"  #: NHWC weights and batches (auto: conv nets on CUDA)
    cudnn_benchmark: bool = True  #: cuDNN picks the fastest convolution algorithm (CUDA only)
    compile: bool | str = False  #: torch.compile the forward passes (true or a backend name)
    num_workers: int = 0  #: DataLoader workers, only for streamed (non-tensor) datasets
    #: streamed val/test sets up to this size decoded once and kept as tensors on the device
    eval_in_memory_mb: int = 1024
    seed: int = 0

    def validate(self, field: str = "train") -> TrainOptions:
        limits = {"period_length": (1, 10**7), "periods": (1, 10**6), "batch_size": (1, 10**6)}
        limits |= {"eval_batch_size": (1, 10**6), "val_batches": (0, 10**5)}
        limits |= {"eval_every_epochs": (0, 10**6), "num_workers": (0, 1024)}
        limits |= {"val_samples_per_class": (0, 10**6), "train_eval_samples": (-1, 10**7)}
        limits |= {"eval_in_memory_mb": (0, 10**7)}
        for key, (low, high) in limits.items():  # sanity limits: a typo, not a budget
            integer(getattr(self, key), f"{field}.{key}", low, high)
        integer(self.seed, f"{field}.seed")
        number(self.lr, f"{field}.lr", 0.0, low_open=True)
        number(self.weight_decay, f"{field}.weight_decay", 0.0)
        check_options(self.amp, self.channels_last, self.cudnn_benchmark, self.compile, field)
        resolve_device(self.device, f"{field}.device")
        return self


def resolve_device(name: str, field: str = "train.device") -> torch.device:
    """``auto`` → CUDA when available, else CPU; an unavailable CUDA request is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(field, f"unknown device {name!r}; use auto, cpu or cuda[:i]") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(field, f"device {name!r} requested but CUDA is not available")
    return dev


def _on_device(dataset: Any, device: torch.device, options: TrainOptions) -> Any:
    """Tensor sets moved to ``device``; a streamed evaluation set decoded once into tensors there
    when it fits in ``eval_in_memory_mb`` (else decoded again at every evaluation)."""
    mb, workers = options.eval_in_memory_mb, options.num_workers
    return in_memory(dataset, device, mb * 2**20, workers, options.eval_batch_size)


class PeriodEngine:
    """Trains ``model`` on ``data`` in periods, with ``controller`` setting ``regularizers``."""

    def __init__(
        self,
        model: nn.Module,
        data: DataSplits,
        regularizers: RegularizerSet,
        controller: Controller,
        options: TrainOptions,
        loss_terms: Sequence[LossTerm] = (),
    ) -> None:
        self.options = options.validate()
        self.device = resolve_device(options.device)
        self.model = model.to(self.device)
        self.data = data
        self.regularizers = regularizers
        self.controller = controller
        self.controller.bind(regularizers.bounds())
        self.loss_terms = list(loss_terms)
        #: model-level regularizers (``where: model``): hooks around the training passes
        self.hooks = regularizers.model_level()
        for hook in self.hooks:
            hook.setup(self.model, data.info)
            if hook.has_penalty:
                self.loss_terms.append(hook.penalty)
        self.optimizer = torch.optim.Adam(
            self.model.parameters(), lr=options.lr, weight_decay=options.weight_decay
        )
        self.accel = setup_device(
            self.model, self.device, amp=options.amp, channels_last=options.channels_last,
            cudnn_benchmark=options.cudnn_benchmark, compile=options.compile,
            image_input=data.is_image,
        )  # fmt: skip
        self.amp_dtype = self.accel.amp_dtype
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.accel.scaler)
        self.train_batches = make_batches(
            data.train, options.batch_size, options.seed, self.device, options.num_workers
        )
        self.val_gen = torch.Generator().manual_seed(options.seed + 7919)
        self.val_set = _on_device(data.val, self.device, options)
        self.val_batch_count = self._val_batch_count(data.num_classes)
        self.train_eval_xy = self._train_eval_subset(data.train)
        self.test_set = _on_device(data.test, self.device, options)
        self.num_classes = data.num_classes
        self.period = 0
        self.passes = 0
        self.status = STATUS_OK
        self.last: PeriodRecord | None = None
        #: called as ``fn(engine, fields)`` at each epoch-end evaluation, while the model holds
        #: the weights it evaluated (model-level regularizers' ``eval_start`` applied), before
        #: training goes on (``tracking/best_weights.py`` snapshots the best epoch's weights)
        self.epoch_eval_listeners: list[Callable[[PeriodEngine, dict[str, float]], None]] = []

    # ----------------------------------------------------------------- one period
    def _forward_loss(
        self, x: torch.Tensor, y: torch.Tensor, train: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and loss; penalty terms join the loss only for training passes."""
        if self.accel.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.accel.amp):
            logits = self.accel.forward(x)
            loss = F.cross_entropy(logits, y)
            if train:
                for term in self.loss_terms:
                    loss = loss + term(self.model)
        return logits, loss

    def step_period(self) -> PeriodRecord:
        """Run one period and return its record (status ``diverged`` on a non-finite loss)."""
        if self.status != STATUS_OK:
            raise RuntimeError(f"run already ended with status {self.status!r}")
        opts = self.options
        start = time.perf_counter()
        state = PeriodState(
            period=self.period,
            last=self.last,
            progress=self.period / opts.periods,
            epoch=self.train_batches.epoch_progress,
        )
        values = self.controller.decide(state)
        self.regularizers.set_values(values)
        in_force = self.regularizers.values()
        for hook in self.hooks:
            hook.period_start(self.model)
        train_loss, conf, epoch_eval, eval_extra = self._train_passes(opts.period_length)
        for hook in self.hooks:
            hook.period_end(self.model)
        if not math.isfinite(train_loss):
            self.status = STATUS_DIVERGED
        val_loss, val_f1 = self._val_minibatches()
        train_eval_loss, train_eval_f1 = self._train_eval()
        record = PeriodRecord(
            period=self.period,
            epoch=self.train_batches.epoch_progress,
            passes=self.passes,
            values=in_force,
            train_loss=train_loss,
            train_f1=macro_f1(conf),
            val_loss=val_loss,
            val_f1=val_f1,
            seconds=0.0,
            status=self.status,
            train_eval_loss=train_eval_loss,
            train_eval_f1=train_eval_f1,
            **epoch_eval,
        )
        record.extra.update(eval_extra)
        if self.status == STATUS_OK:
            self.controller.observe(record)
        self.period += 1
        self.last = record
        record.seconds = time.perf_counter() - start
        return record

    def _train_passes(
        self, n: int
    ) -> tuple[float, torch.Tensor, dict[str, float], dict[str, float]]:
        """``n`` training passes: mean loss, the confusion counts, and the epoch-end evaluation
        (record fields, extras) when an epoch ended inside them (empty otherwise)."""
        c = self.num_classes
        conf = torch.zeros(c * c, dtype=torch.long, device=self.device)
        loss_sum = torch.zeros((), device=self.device)
        epoch_eval: dict[str, float] = {}
        eval_extra: dict[str, float] = {}
        self.model.train()
        for _ in range(n):
            x, y = self.train_batches.next()
            for hook in self.hooks:
                x = hook.transform(x)
            logits, loss = self._forward_loss(x, y, train=True)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            for hook in self.hooks:
                hook.after_step(self.model)
            loss_sum += loss.detach().float()
            confusion_update(conf, y, logits.detach().argmax(1))
            self.passes += 1
            if self.train_batches.epoch_ended and self._evaluate_now():
                epoch_eval, eval_extra = self._epoch_evaluation()
                self.model.train()
        return float(loss_sum) / n, conf, epoch_eval, eval_extra

    # ----------------------------------------------------------------- evaluation
    def _val_batch_count(self, num_classes: int) -> int:
        """``val_batches``, raised so ``val_samples_per_class`` samples per class are seen."""
        opts = self.options
        if opts.val_batches == 0:
            return 0
        bs = min(opts.batch_size, len(self.val_set))
        want = min(opts.val_samples_per_class * num_classes, len(self.val_set))
        return max(opts.val_batches, math.ceil(want / max(bs, 1)))

    def _train_eval_subset(self, train: Any) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The fixed training subset evaluated at period ends (None when off), on the device."""
        n = self.options.train_eval_samples
        if n == 0 and getattr(self.controller, "needs_train_eval", False):
            n = -1  # e.g. PPO with the faithful ``gap`` reward
        if n == -1:
            n = self.val_batch_count * min(self.options.batch_size, len(self.val_set))
        n = min(n, len(train))
        if n <= 0:
            return None
        gen = torch.Generator().manual_seed(self.options.seed + 104729)
        idx = torch.randperm(len(train), generator=gen)[:n]
        x, y = self._gather(train, idx)
        return x.to(self.device), y.to(self.device)

    @torch.no_grad()
    def _train_eval(self) -> tuple[float | None, float | None]:
        """Eval-mode loss and macro-F1 of the fixed training subset (None, None when off)."""
        if self.train_eval_xy is None:
            return None, None
        x_all, y_all = self.train_eval_xy
        self.model.eval()
        conf = torch.zeros(self.num_classes**2, dtype=torch.long, device=self.device)
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        bs = self.options.eval_batch_size
        for i in range(0, len(y_all), bs):
            x, y = x_all[i : i + bs], y_all[i : i + bs]
            logits, loss = self._forward_loss(x, y)
            loss_sum += loss.double() * len(y)
            confusion_update(conf, y, logits.argmax(1))
        self.model.train()
        return float(loss_sum) / len(y_all), macro_f1(conf)

    @torch.no_grad()
    def _val_minibatches(self) -> tuple[float, float]:
        n_batches = self.val_batch_count
        if n_batches == 0:
            return math.nan, math.nan
        n = len(self.val_set)
        bs = min(self.options.batch_size, n)
        self.model.eval()
        idx = torch.randint(0, n, (n_batches, bs), generator=self.val_gen)
        conf = torch.zeros(self.num_classes**2, dtype=torch.long, device=self.device)
        loss_sum = torch.zeros((), device=self.device)
        for row in idx:
            x, y = self._gather(self.val_set, row)
            logits, loss = self._forward_loss(x, y)
            loss_sum += loss.float()
            confusion_update(conf, y, logits.argmax(1))
        self.model.train()
        return float(loss_sum) / n_batches, macro_f1(conf)

    def _gather(self, dataset: Any, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(dataset, TensorDataset):
            x, y = dataset.tensors
            idx = idx.to(x.device)
            return x.index_select(0, idx), y.index_select(0, idx)
        items = [dataset[int(i)] for i in idx]
        x = torch.stack([torch.as_tensor(a) for a, _ in items]).to(self.device)
        y = torch.as_tensor([int(b) for _, b in items]).to(self.device)
        return x, y

    @torch.no_grad()
    def evaluate(self, split: str) -> tuple[float, float]:
        """Loss and macro-F1 over a whole split (``val`` or ``test``) in eval mode."""
        dataset = {"val": self.val_set, "test": self.test_set}[split]
        self.model.eval()
        conf = torch.zeros(self.num_classes**2, dtype=torch.long, device=self.device)
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        n = 0
        for x, y in iterate_eval(
            dataset, self.options.eval_batch_size, self.device, self.options.num_workers
        ):
            logits, loss = self._forward_loss(x, y)
            loss_sum += loss.double() * len(y)
            n += len(y)
            confusion_update(conf, y, logits.argmax(1))
        self.model.train()
        return float(loss_sum) / max(n, 1), macro_f1(conf)

    def _evaluate_now(self) -> bool:
        every = self.options.eval_every_epochs
        return every > 0 and self.train_batches.epoch % every == 0

    def _epoch_evaluation(self) -> tuple[dict[str, float], dict[str, float]]:
        """Full validation and test under the evaluation convention (module doc): the record's
        fields, and the extras ``eval_state/<group>`` and ``full_val_penalty``."""
        for hook in self.hooks:
            hook.eval_start(self.model)
        try:
            val_loss, val_f1 = self.evaluate("val")
            test_loss, test_f1 = self.evaluate("test")
            extra = {f"eval_state/{k}": v for k, v in self.regularizers.eval_states().items()}
            terms = [h.penalty(self.model) for h in self.hooks if h.has_penalty]
            if terms:  # the model is in train mode again: penalties are live
                extra["full_val_penalty"] = float(torch.stack(terms).sum().detach())
            fields = {"full_val_loss": val_loss, "full_val_f1": val_f1}
            fields |= {"test_loss": test_loss, "test_f1": test_f1}
            for listener in self.epoch_eval_listeners:
                listener(self, fields)  # the weights this evaluation saw (PFREWA: averaged)
        finally:
            for hook in reversed(self.hooks):
                hook.eval_end(self.model)
        return fields, extra

    # ----------------------------------------------------------------- whole runs
    def run(
        self, periods: int | None = None, on_record: Callable[[PeriodRecord], None] | None = None
    ) -> list[PeriodRecord]:
        """Run ``periods`` more periods (default: up to ``options.periods``); stops if diverged."""
        todo = self.options.periods - self.period if periods is None else periods
        records = []
        for _ in range(max(todo, 0)):
            rec = self.step_period()
            records.append(rec)
            if on_record is not None:
                on_record(rec)
            if rec.status != STATUS_OK:
                break
        return records

    @property
    def done(self) -> bool:
        return self.status != STATUS_OK or self.period >= self.options.periods

    # ----------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue bit-for-bit (on the same device type)."""
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "controller": self.controller.state_dict(),
            "regularizer_values": self.regularizers.values(),
            "train_batches": self.train_batches.state_dict(),
            "val_gen": self.val_gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "period": self.period,
            "passes": self.passes,
            "status": self.status,
            "last": None if self.last is None else self.last.to_dict(),
            "options": asdict(self.options),
        }
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.controller.load_state_dict(state["controller"])
        self.regularizers.set_values(state["regularizer_values"])
        self.train_batches.load_state_dict(state["train_batches"])
        self.val_gen.set_state(state["val_gen"].cpu())
        torch.set_rng_state(state["torch_rng"].cpu())
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])
        self.period = int(state["period"])
        self.passes = int(state["passes"])
        self.status = str(state["status"])
        last = state["last"]
        self.last = None if last is None else PeriodRecord.from_dict(last)

    def save(self, path: str) -> None:
        torch.save(self.state_dict(), path)

    def load(self, path: str) -> None:
        self.load_state_dict(load_state(path))


def load_state(path: Any) -> dict[str, Any]:
    """A checkpoint read onto the CPU. ``load_state_dict`` copies weights and optimizer state
    onto the device; RNG states must stay CPU byte tensors (``map_location=cuda`` broke every
    restore on a GPU: found on an H200, tests/core/test_engine.py)."""
    return torch.load(path, map_location="cpu", weights_only=False)
