"""The training loops of the finetune task: a linear head on features computed once (``LinearProbe``), or
training through the backbone on images (``ImageTraining``), both with best-epoch tracking, early stopping
and a checkpoint after every epoch (``Fit``). ``params`` is the task's ``FinetuneParams``."""

from __future__ import annotations

import itertools

from tlq.errors import BadInput
from tlq.ml import distributed

CHECKPOINT = "checkpoint.pt"


def endless_batches(order, batch_size: int):
    """Batches of indices, epoch after epoch, each epoch in the order ``order()`` gives: a range test of 100 steps
    outlasts an epoch of a small dataset."""
    while True:
        indices = order()
        yield from (indices[i : i + batch_size] for i in range(0, len(indices), batch_size))


class Fit:
    """What both ways of training share: best-epoch tracking, early stopping and checkpoints."""

    def __init__(self, ctx, params, model) -> None:
        self.ctx, self.params, self.model = ctx, params, model
        self.best_acc, self.best_epoch, self.bad_epochs = -1.0, 0, 0
        self.best_state = None
        self.history: dict[str, list[tuple[int, float]]] = {}

    def note(self, epoch: int, trained, checked, trained_state) -> dict[str, float]:
        """The epoch's metrics from its training and validation passes; tracks the best epoch."""
        metrics = {
            "train_loss": trained.loss,
            "train_acc": trained.acc,
            "val_loss": checked.loss,
            "val_acc": checked.acc,
            f"val_top{checked.k}": checked.top_k,  # --top-k, capped at the number of classes
            "lr": self.optimizer.param_groups[0]["lr"],
            "epoch_seconds": trained.seconds + checked.seconds,
            "images_per_second": trained.images_per_second,
            "data_wait_share": trained.data_wait_share,
        }
        for name in ("train_acc", "val_acc", "train_loss", "val_loss"):
            self.history.setdefault(name, []).append((epoch, metrics[name]))
        if metrics["val_acc"] > self.best_acc:
            self.best_acc, self.best_epoch, self.bad_epochs = metrics["val_acc"], epoch, 0
            if self.params.early_stop:
                self.best_state = {k: v.detach().clone() for k, v in trained_state().items()}
        else:
            self.bad_epochs += 1
        return {k: v for k, v in metrics.items() if v is not None}

    def should_stop(self) -> bool:
        return bool(self.params.early_stop) and self.bad_epochs >= self.params.early_stop

    def common_state(self, epoch: int, rng: dict) -> dict:
        return {
            "origin": self.ctx.origin.as_dict(),
            "epoch": epoch,
            "lr": self.params.lr,  # what --lr auto chose: a resumed attempt trains on with it
            "rng": rng,
            "best_acc": self.best_acc,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "best_state": self.best_state,
            "history": {k: [list(p) for p in v] for k, v in self.history.items()},
        }

    def lr_range_test(self, **options):
        """The learning-rate range test (``tlq.ml.lr_find.range_test``, with its ``options``) on this fit's own
        training step, a fresh optimizer of the job's kind over the parameters that train first (the head for
        linear-probe, freeze and freeze-unfreeze; everything for full); the model is left as it was."""
        from tlq.ml.lr_find import range_test

        module, optimizer, step = self.probe()
        on_step = lambda i, n: self.ctx.progress(i, n, "lr range test")  # noqa: E731
        return range_test(module, optimizer, step, on_step=on_step, **options)

    def choose_lr(self, title: str) -> float:
        """``--lr auto``: the range test, its curve recorded as lr-find's is (``lr_find.record``), the lr it chose
        set as ``params.lr``, and an epoch-0 checkpoint at once: an attempt that dies before epoch 1 ends resumes
        at this lr and never runs the test again."""
        from tlq.ml.lr_find import record
        from tlq.ml.training import rng_state

        curve = self.lr_range_test()
        record(self.ctx, curve, title)
        self.params.lr = curve.chosen
        self.begin()
        self.save(0, rng_state())
        return curve.chosen

    def restore_optimizer(self, state: dict) -> None:
        """The optimizer's and scheduler's state from a checkpoint. One written before tlq used timm's optimizer
        has other parameter groups (no norm/bias split): its moments are dropped, its position in the schedule
        kept."""
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except ValueError as exc:
            self.ctx.log.warning(
                "job %s: optimizer state not resumed (%s); its moments start afresh", self.ctx.job_id, exc
            )
        self.scheduler.load_state_dict(state["scheduler"])

    def restore_common(self, state: dict) -> None:
        self.best_acc, self.best_epoch = state["best_acc"], state["best_epoch"]
        self.bad_epochs, self.best_state = state["bad_epochs"], state["best_state"]
        self.history = {k: [tuple(p) for p in v] for k, v in state["history"].items()}


class LinearProbe(Fit):
    """A linear head trained on features computed once."""

    def __init__(self, ctx, params, model, train_feats, train_y, val_feats, val_y) -> None:
        import torch

        super().__init__(ctx, params, model)
        self.head = model.get_classifier().float().cpu()
        if not isinstance(self.head, torch.nn.Linear):
            raise BadInput(f"linear-probe needs a linear classifier; {type(self.head).__name__} is not (use freeze)")
        self.x_train = torch.from_numpy(train_feats.features)
        self.y_train = torch.as_tensor([train_y[i] for i in train_feats.kept])
        self.x_val = torch.from_numpy(val_feats.features)
        self.y_val = torch.as_tensor([val_y[i] for i in val_feats.kept])
        self.criterion = torch.nn.CrossEntropyLoss(label_smoothing=params.label_smoothing)
        self.plain_criterion = torch.nn.CrossEntropyLoss()
        self.optimizer = self.scheduler = None

    def _optimizer(self, lr: float):
        from tlq.ml.training import decay_groups, make_optimizer

        groups = [group | {"lr": lr} for group in decay_groups(self.head, self.params.weight_decay)]
        return make_optimizer(groups, self.params.optimizer, self.params.weight_decay)

    def begin(self) -> None:
        """The optimizer and schedule, built at the first epoch: ``--lr auto`` is known only by then."""
        from tlq.ml.training import make_scheduler

        if self.optimizer is not None:
            return
        p = self.params
        self.optimizer = self._optimizer(p.lr)
        steps_per_epoch = -(-len(self.y_train) // p.batch_size)
        self.scheduler = make_scheduler(self.optimizer, p.schedule, p.epochs, steps_per_epoch, p.warmup_epochs)

    def probe(self):
        """(head, optimizer, one step on the next batch of features) for ``lr_range_test``."""
        import torch

        optimizer = self._optimizer(1.0)
        generator = torch.Generator().manual_seed(self.params.seed)
        order = lambda: torch.randperm(len(self.y_train), generator=generator)  # noqa: E731
        batches = endless_batches(order, self.params.batch_size)

        def step() -> float:  # train_head_epoch's step
            batch = next(batches)
            loss = self.criterion(self.head(self.x_train[batch]), self.y_train[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            return loss.item()

        self.head.train()
        return self.head, optimizer, step

    def epoch(self, epoch: int) -> dict[str, float]:
        from tlq.ml.training import evaluate_head, train_head_epoch

        self.begin()
        trained = train_head_epoch(
            self.head,
            self.x_train,
            self.y_train,
            self.optimizer,
            self.scheduler,
            self.criterion,
            self.params.batch_size,
            self.params.seed * 1000 + epoch,
        )
        self.ctx.progress(epoch, self.params.epochs, f"epoch {epoch}/{self.params.epochs}")
        checked = evaluate_head(self.head, self.x_val, self.y_val, self.plain_criterion, self.params.top_k)
        return self.note(epoch, trained, checked, self.head.state_dict)

    def save(self, epoch: int, rng: dict) -> None:
        from tlq.ml.training import save_checkpoint

        state = self.common_state(epoch, rng) | {
            "head": self.head.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
        }
        save_checkpoint(self.ctx.artifacts, CHECKPOINT, state)

    def restore(self, state: dict) -> None:
        self.restore_common(state)
        self.head.load_state_dict(state["head"])
        self.begin()
        self.restore_optimizer(state)

    def finish(self):
        from tlq.ml.training import evaluate_head

        if self.best_state is not None:
            self.head.load_state_dict(self.best_state)
        self.model.get_classifier().load_state_dict(self.head.state_dict())
        return evaluate_head(self.head, self.x_val, self.y_val, self.plain_criterion, self.params.top_k)


class ImageTraining(Fit):
    """Training through the backbone on (augmented) images: freeze, freeze-unfreeze or full."""

    def __init__(self, ctx, params, model, precision, train_files, train_y, val_files, val_y, eval_tf, train_tf):
        import torch

        super().__init__(ctx, params, model)
        self.precision = precision
        self.train_files, self.train_y, self.val_y, self.train_tf = train_files, train_y, val_y, train_tf
        from tlq.ml.features import image_loader
        from tlq.ml.training import training_loader

        workers, device = params.loader_workers, ctx.device
        self.train_loader = training_loader(train_files, train_tf, params.batch_size, params.seed, workers, device)
        self.val_loader = image_loader(val_files, eval_tf, params.batch_size, workers, persistent=True, device=device)
        self.criterion = torch.nn.CrossEntropyLoss(label_smoothing=params.label_smoothing)
        self.plain_criterion = torch.nn.CrossEntropyLoss()
        self.phase = None
        self.wrapped = None  # what trains in this phase (in DistributedDataParallel under --ddp)
        self.optimizer = self.scheduler = None

    def phase_of(self, epoch: int) -> str:
        if self.params.strategy == "full":
            return "unfrozen"
        if self.params.strategy == "freeze":
            return "frozen"
        return "frozen" if epoch <= self.params.freeze_epochs else "unfrozen"

    def _enter_phase(self, epoch: int) -> None:
        from tlq.ml.training import make_optimizer, make_scheduler, param_groups

        phase = self.phase_of(epoch)
        if phase == self.phase:
            return
        self.phase = phase
        p = self.params
        groups = param_groups(self.model, p.lr, p.backbone_multiplier, phase == "unfrozen", p.weight_decay)
        self.optimizer = make_optimizer(groups, p.optimizer, p.weight_decay)
        phase_epochs = sum(1 for e in range(1, p.epochs + 1) if self.phase_of(e) == phase)
        steps_per_epoch = max(1, len(self.train_loader))  # of this rank's shard under --ddp
        # What trains in this phase, its gradients averaged across the ranks under --ddp (else itself).
        trains = self.model if phase == "unfrozen" else self.model.get_classifier()
        self.wrapped = distributed.wrap(trains, self.ctx.device)
        # Each phase warms up anew (at most all its epochs but one): unfreezing starts a cold optimizer state.
        self.scheduler = make_scheduler(self.optimizer, p.schedule, phase_epochs, steps_per_epoch, p.warmup_epochs)

    def begin(self) -> None:
        self._enter_phase(1)

    def probe(self):
        """(model, optimizer, one training step on the next batch) for ``lr_range_test``, in the first epoch's
        phase: freeze-unfreeze's --lr is the head's, and its backbone's follows it (x --backbone-lr-mult)."""
        import torch

        from tlq.ml.training import make_optimizer, param_groups, set_backbone_mode, train_step, training_loader

        p = self.params
        unfrozen = self.phase_of(1) == "unfrozen"
        optimizer = make_optimizer(
            param_groups(self.model, 1.0, p.backbone_multiplier, unfrozen, p.weight_decay), p.optimizer, p.weight_decay
        )
        label_of = torch.as_tensor(list(self.train_y), dtype=torch.long)
        # A loader of its own: the training loader's decoding processes persist across epochs, and 100 batches of
        # augmentation drawn from them would change every epoch's augmentation from what the chosen lr by hand gets.
        loader = training_loader(
            self.train_files, self.train_tf, p.batch_size, p.seed, p.loader_workers, self.ctx.device
        )

        def endless():
            for epoch in itertools.count(10**6):  # orders of their own, apart from the training epochs'
                loader.sampler.set_epoch(epoch)
                read = 0
                for images, indices, _bad in loader:
                    if images is not None:
                        read += 1
                        yield images, indices
                if not read:  # else an endless loop that never reaches a step, nor a cancel
                    raise BadInput("no training image could be read for the lr range test; see skipped.csv")

        batches = endless()

        def step() -> float:
            images, indices = next(batches)
            labels = label_of[indices].to(self.ctx.device)
            loss, _ = train_step(self.model, images, labels, optimizer, self.criterion, self.ctx.device,
                                 self.precision, unfrozen)  # fmt: skip
            return loss.item()

        set_backbone_mode(self.model, unfrozen)
        return self.model, optimizer, step

    def epoch(self, epoch: int) -> dict[str, float]:
        from tlq.ml.training import evaluate, train_epoch

        self._enter_phase(epoch)
        p = self.params
        stage = f"epoch {epoch}/{p.epochs}"
        trained = train_epoch(
            self.model,
            self.train_loader,
            self.train_y,
            self.optimizer,
            self.scheduler,
            self.criterion,
            self.ctx.device,
            self.precision,
            epoch,
            train_backbone=self.phase == "unfrozen",
            on_step=lambda i, n: self.ctx.progress(i, n, f"{stage} train"),
            wrapped=self.wrapped,
        )
        if not distributed.is_main():  # validation, and what follows from it, is rank 0's
            return self.note(epoch, trained, trained, dict)
        checked = evaluate(
            self.model,
            self.val_loader,
            self.val_y,
            self.plain_criterion,
            self.ctx.device,
            self.precision,
            on_step=lambda i, n: self.ctx.progress(i, n, f"{stage} val"),
            k=p.top_k,
        )
        return self.note(epoch, trained, checked, self.model.state_dict)

    def should_stop(self) -> bool:
        return distributed.agree(super().should_stop())  # rank 0 validates; every rank stops with it

    def save(self, epoch: int, rng: dict) -> None:
        from tlq.ml.training import save_checkpoint

        if not distributed.is_main():
            return
        state = self.common_state(epoch, rng) | {
            "model": self.model.state_dict(),
            "phase": self.phase,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
        }
        save_checkpoint(self.ctx.artifacts, CHECKPOINT, state)

    def restore(self, state: dict) -> None:
        self.restore_common(state)
        self.model.load_state_dict(state["model"])
        next_epoch = state["epoch"] + 1
        if next_epoch <= self.params.epochs and self.phase_of(next_epoch) == state["phase"]:
            self._enter_phase(next_epoch)
            self.restore_optimizer(state)

    def finish(self):
        from tlq.ml.training import evaluate

        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        p = self.params
        return evaluate(
            self.model, self.val_loader, self.val_y, self.plain_criterion, self.ctx.device, self.precision, k=p.top_k
        )
