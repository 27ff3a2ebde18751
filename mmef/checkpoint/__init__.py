from .io import SAFE_GLOBALS, CheckpointError, load_file, state_dict_of
from .keys import detect_format, map_original, to_mmef
from .pretrained import load_pretrained

__all__ = ['SAFE_GLOBALS', 'CheckpointError', 'load_file', 'state_dict_of', 'detect_format',
           'map_original', 'to_mmef', 'load_pretrained']
