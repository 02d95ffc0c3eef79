"""finetune's --epochs and --batch-size where the user leaves them to tlq: sized to the number of training images.

Measured on `make demo`'s few-shot task (25 images, bench row 8; README "Defaults for small datasets"): with
32-image batches 25 images make one update an epoch, and what counted first was the number of updates.
"""

from __future__ import annotations

import logging

DEFAULT_EPOCHS, DEFAULT_BATCH = 10, 32
MIN_UPDATES, MAX_SIZED_EPOCHS, MIN_SIZED_BATCH = 300, 100, 8


def sized_to_data(
    epochs: int | None, batch_size: int | None, n_train: int, log: logging.Logger | None = None
) -> tuple[int, int]:
    """(epochs, batch size) for ``n_train`` training images where the user left them to tlq (None).

    The batch: ``DEFAULT_BATCH``, but at most a quarter of the images (at least ``MIN_SIZED_BATCH``), so that an
    epoch makes at least about four updates. The epochs: ``DEFAULT_EPOCHS``, or more where that would make fewer
    than ``MIN_UPDATES`` updates in all, up to ``MAX_SIZED_EPOCHS``. From about 1,000 images up both are the
    plain defaults. ``log`` hears what was chosen.
    """
    given = epochs, batch_size
    if batch_size is None:
        batch_size = max(MIN_SIZED_BATCH, min(DEFAULT_BATCH, n_train // 4))
    if epochs is None:
        n = max(n_train, 1)
        drop_last = n > batch_size and n % batch_size == 1  # as training_loader does
        per_epoch = max(1, n // batch_size if drop_last else -(-n // batch_size))
        epochs = min(MAX_SIZED_EPOCHS, max(DEFAULT_EPOCHS, -(-MIN_UPDATES // per_epoch)))
    if log is not None and None in given:
        log.info(
            "%d training images: %s epochs of %s-image batches (--epochs and --batch-size set them)",
            n_train,
            epochs if given[0] else f"{epochs} (sized to the data)",
            batch_size if given[1] else f"{batch_size} (sized to the data)",
        )
    return epochs, batch_size
