"""Datasets as preprocessed (train, test) tensors, with verified files and no implicit downloads.

``load_dataset(name)`` reads verified local files only: from ``root`` or $NEUROSIM_DATA, known
system locations, then the cache ``~/.cache/neurosim/data``. ``fetch_dataset(name)`` (CLI:
``neurosim data fetch NAME [--from PATH]``) puts the official files into the cache.
"""
from .dataset import DataError, Dataset
from .fetch import fetch_dataset
from .loading import NORMALIZATIONS, available_datasets, load_dataset
from .registry import DATASETS, data_root

__all__ = ["DATASETS", "DataError", "Dataset", "NORMALIZATIONS", "available_datasets",
           "data_root", "fetch_dataset", "load_dataset"]
