"""Datasets as preprocessed tensors, with verified files and no implicit downloads.

``load_dataset(name)`` reads verified local files only: from ``root`` or $NEUROSIM_DATA, known
system locations, then the cache ``~/.cache/neurosim/data``. ``fetch_dataset(name)`` (CLI:
``neurosim data fetch NAME [--from PATH]``) puts the official files into the cache.
``load_array_file(path)`` reads a user's own arrays (.npz or HDF5), ``dataset_from_spec`` takes
a model file's [data] table (either form), and ``validation_split`` draws a seeded split.
"""
from .arrays import load_array_file
from .dataset import DataError, Dataset
from .fetch import fetch_dataset
from .loading import NORMALIZATIONS, available_datasets, dataset_from_spec, load_dataset
from .registry import DATASETS, data_root
from .split import validation_split

__all__ = ["DATASETS", "DataError", "Dataset", "NORMALIZATIONS", "available_datasets",
           "data_root", "dataset_from_spec", "fetch_dataset", "load_array_file", "load_dataset",
           "validation_split"]
