"""Checkpoint handling: safe reading (io), key maps (keys), the one reader (reader), backbone
initialisation from a file (pretrained, registered as mmef's Pretrained initializer) and the
converter (convert)."""
from .io import SAFE_GLOBALS, CheckpointError, load_file, state_dict_of
from .keys import detect_format, map_original, to_mmef
from .pretrained import PretrainedEfficientFormer, load_pretrained
from .reader import Checkpoint, match_keys, read_checkpoint

__all__ = ['SAFE_GLOBALS', 'CheckpointError', 'load_file', 'state_dict_of', 'detect_format',
           'map_original', 'to_mmef', 'load_pretrained', 'PretrainedEfficientFormer',
           'Checkpoint', 'read_checkpoint', 'match_keys']
