"""Pure key mappings from foreign EfficientFormer checkpoints to mmef names.

Each mapping takes a backbone-level state dict (no 'backbone.' prefix) and returns a new one;
keys it does not know pass through unchanged, so applying a mapping twice is the same as once.

mmef names:
    stem.conv{1,2}.{conv,bn}.*                        stem (two conv3x3-BN, stride 2 each)
    stages.{i}.downsample.{conv,bn}.*                 i = 1..3
    stages.{i}.blocks.{j}.mlp.fc{1,2}.{conv,bn}.*     MB4D
    stages.{i}.blocks.{j}.ls{1,2}.gamma
    stages.3.attn_blocks.{j}.{norm1,norm2,mlp.fc1,mlp.fc2,ls1.gamma,ls2.gamma}.*   MB3D
    stages.3.attn_blocks.{j}.attn.{qkv,proj,bias_table}
    norm{i}.*                                          output GroupNorms, i = stage index
"""
import re

# keys of the original classifier, dropped when a backbone is initialised from ImageNet weights
CLASSIFIER_PREFIXES = ('head.', 'dist_head.', 'norm.')

_ORIG_STEM = {'0': 'conv1.conv', '1': 'conv1.bn', '3': 'conv2.conv', '4': 'conv2.bn'}
_ORIG_4D = {'mlp.fc1': 'mlp.fc1.conv', 'mlp.norm1': 'mlp.fc1.bn', 'mlp.fc2': 'mlp.fc2.conv',
            'mlp.norm2': 'mlp.fc2.bn', 'layer_scale_1': 'ls1.gamma', 'layer_scale_2': 'ls2.gamma'}
_ORIG_3D = {'token_mixer.qkv': 'attn.qkv', 'token_mixer.proj': 'attn.proj',
            'layer_scale_1': 'ls1.gamma', 'layer_scale_2': 'ls2.gamma'}
# placeholders and index buffers the original code keeps only so other files load
_ORIG_BUFFERS = ('token_mixer.attention_bias_idxs', 'token_mixer.attention_bias_idxs_seg')


def _sub(name, table):
    for old, new in table.items():
        if name == old or name.startswith(old + '.'):
            return new + name[len(old):]
    return name


def is_original(state_dict):
    return any(k.startswith(('patch_embed.', 'network.')) for k in state_dict)


def map_original(state_dict):
    """Original EfficientFormer (ImageNet ``model`` or dense ``backbone.*``) -> mmef names.

    The attention bias of the dense files (``attention_biases_seg``) wins over the ImageNet
    placeholder ``attention_biases`` they also carry. Index buffers are dropped: mmef derives them.
    The returned dict has the original classifier keys (head / dist_head / norm) unchanged.
    """
    if not is_original(state_dict):
        return dict(state_dict)  # already mapped: the output GroupNorm names would clash
    has_seg = any(k.endswith('attention_biases_seg') for k in state_dict)
    # in network.6 the flatten takes the slot right after the last 4D block
    last = {int(m.group(1)) for k in state_dict
            for m in [re.match(r'network\.6\.(\d+)\.mlp\.norm1\.', k)] if m}
    num_4d = max(last) + 1 if last else 0
    out = {}
    for key, value in state_dict.items():
        new = key
        if key.endswith(_ORIG_BUFFERS):
            continue
        if key.endswith('token_mixer.attention_biases') and has_seg:
            continue  # zero placeholder in the dense files
        m = re.match(r'patch_embed\.(\d)\.(.+)$', key)
        if m and m.group(1) in _ORIG_STEM:
            new = f'stem.{_ORIG_STEM[m.group(1)]}.{m.group(2)}'
        m = re.match(r'network\.(\d)\.(.+)$', key)
        if m:
            idx, rest = int(m.group(1)), m.group(2)
            if idx % 2:  # downsampling between stages
                new = f'stages.{(idx + 1) // 2}.downsample.' + _sub(rest, {'proj': 'conv',
                                                                         'norm': 'bn'})
            else:
                b, rest = rest.split('.', 1)
                stage, b = idx // 2, int(b)
                if stage == 3 and b > num_4d:
                    j = b - num_4d - 1
                    rest = re.sub(r'^token_mixer\.attention_biases(_seg)?$', 'attn.bias_table', rest)
                    new = f'stages.3.attn_blocks.{j}.' + _sub(rest, _ORIG_3D)
                else:
                    new = f'stages.{stage}.blocks.{b}.' + _sub(rest, _ORIG_4D)
        m = re.match(r'norm([0246])\.(.+)$', key)
        if m:
            new = f'norm{int(m.group(1)) // 2}.{m.group(2)}'
        out[new] = value
    return out


def needs_official_bias(state_dict):
    """The original dense files were trained with the pair-matrix bias ('official' mode)."""
    return any(k.endswith('attention_biases_seg') for k in state_dict)


def detect_format(state_dict):
    """'original' or 'mmef' for a backbone-level state dict (None if neither)."""
    if is_original(state_dict):
        return 'original'
    if any(k.startswith(('stem.conv1.', 'stages.')) for k in state_dict):
        return 'mmef'
    return None


def to_mmef(state_dict):
    """Maps a backbone-level state dict of any known format to mmef names (idempotent)."""
    return map_original(state_dict) if detect_format(state_dict) == 'original' \
        else dict(state_dict)
