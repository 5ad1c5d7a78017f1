"""Class pools from any image dataset: an imagefolder directory (``<class>/<image>``) or a Hub dataset name.

The one reader of user datasets for meta-training (``TrainingConfig.train_sources``) and for the benchmark
(``sgps evaluate --data-dir``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..errors import DataError
from .descriptions import class_description, load_description_file
from .episodes import ClassPool
from .loading import load_image_dataset, prepare_arrays

logger = logging.getLogger(__name__)


def dataset_pools(source: str, image_size: int, descriptions: str | os.PathLike[str] | None = None) -> list[ClassPool]:
    """One task's pools from an imagefolder directory (``<class>/<image>``) or a Hub dataset name.

    Class texts: the ``descriptions`` JSON file (class -> text) when given, else the packaged
    descriptions when the folder is named like a known task, else the class name with spaces.
    """
    arrays = prepare_arrays(load_image_dataset(source), image_size)
    task = Path(str(source)).name or str(source)
    given = load_description_file(descriptions) if descriptions is not None else {}
    unknown = sorted(set(given) - set(arrays.class_names))
    if unknown:
        raise DataError(
            f"--descriptions names classes {unknown} that are not in {source!r}; its classes: "
            f"{', '.join(arrays.class_names)}."
        )
    pools, fallback = [], []
    for index, name in enumerate(arrays.class_names):
        text = given.get(name) or class_description(task, name)
        if not text:
            fallback.append(name)
            text = name.replace("_", " ")
        pools.append(ClassPool(task=task, class_name=name, images=arrays.images[arrays.labels == index], text=text))
    if fallback:
        logger.warning("No description for %s: using the class name as its text.", ", ".join(fallback))
    return pools
