"""The library's file formats: every ``.npz`` it reads or writes, and torchvision's weights.

* :mod:`.files` - ``.npz`` without pickle, atomic writes, small JSON documents, OS errors in words;
* :mod:`.weights` - weights files (a ``state_dict``, optionally self-describing: :func:`load_model_file`);
* :mod:`.checkpoint` - training checkpoints;
* :mod:`.torchvision` - the architecture a torchvision state dict describes, and ``.pth`` conversion.
"""
from .checkpoint import CHECKPOINT_VERSION, checkpoint_arrays, read_checkpoint
from .files import (WeightsFileError, atomic_write, check_state_values, describe_os_error, json_array, json_entry,
                    load_npz, remove_stale_temp_files, save_npz)
from .torchvision import checked_description, convert_torch_checkpoint, describe_torchvision_state
from .weights import (describe_inputs, load_model_file, load_weights, load_weights_arrays, metadata_arrays,
                      model_config_from_arrays, save_weights)

__all__ = ["WeightsFileError", "atomic_write", "remove_stale_temp_files", "save_npz", "load_npz", "json_array",
           "json_entry", "check_state_values", "describe_os_error", "metadata_arrays", "describe_inputs",
           "model_config_from_arrays", "load_model_file", "save_weights", "load_weights", "load_weights_arrays",
           "CHECKPOINT_VERSION", "checkpoint_arrays", "read_checkpoint", "describe_torchvision_state",
           "checked_description", "convert_torch_checkpoint"]
