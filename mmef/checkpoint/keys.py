"""Pure key mappings from foreign EfficientFormer checkpoints to mmef names.

Every mapping takes a backbone-level state dict (no 'backbone.' prefix) and returns a new dict. A
mapping only acts on a dict of its own format (see :func:`detect_format`) and returns any other
dict unchanged, so applying it twice is the same as once. Tensors are never copied or modified.

mmef names:
    stem.conv{1,2}.{conv,bn}.*                        stem (two conv3x3-BN, stride 2 each)
    stages.{i}.downsample.{conv,bn}.*                 i = 1..3
    stages.{i}.blocks.{j}.mlp.fc{1,2}.{conv,bn}.*     MB4D
    stages.{i}.blocks.{j}.ls{1,2}.gamma
    stages.3.attn_blocks.{j}.{norm1,norm2,mlp.fc1,mlp.fc2,ls1.gamma,ls2.gamma}.*   MB3D
    stages.3.attn_blocks.{j}.attn.{qkv,proj,bias_table}
    norm{i}.*                                          output GroupNorms, i = stage index
The ImageNet classifier keeps the original names ``head.*``, ``dist_head.*`` and ``norm.*`` (the
LayerNorm before the head); :data:`CLASSIFIER_PREFIXES` lists them.

Source layouts (block j of stage i; in the last stage a parameter-free flatten takes the slot right
after the last 4D block, so its 3D blocks start one index later):
    original    patch_embed.{0,1,3,4}; network.{0,2,4,6}.j (stages) and network.{1,3,5}.{proj,norm}
                (downsampling); layer_scale_{1,2}; token_mixer.attention_biases[_seg];
                dense files: norm{0,2,4,6}
    timm        stem.{conv1,norm1,conv2,norm2}; stages.i.downsample.{conv,norm}; stages.i.blocks.j;
                ls{1,2}.gamma; head / head_dist / norm
    mmpretrain  patch_embed.{0,1}.{conv,bn}; network.i.0.{conv,bn} (downsampling, i >= 1) with the
                blocks after it; ls{1,2}.weight; norm3 (a LayerNorm in ImageNet files);
                classifier head.head / head.dist_head outside the backbone
"""
import re

# keys of the original classifier, dropped when a backbone is initialised from ImageNet weights
CLASSIFIER_PREFIXES = ('head.', 'dist_head.', 'norm.')

_BN = r'(weight|bias|running_mean|running_var|num_batches_tracked)'
# keys that only one format has; counted to tell the formats apart
_MARKERS = {
    'original': [rf'^patch_embed\.[0134]\.{_BN}$', r'^network\.[135]\.(proj|norm)\.',
                 r'^network\.\d+\.\d+\.layer_scale_[12]$'],
    'timm': [r'^stem\.(conv[12]|norm[12])\.', r'^stages\.\d+\.downsample\.norm\.',
             r'^stages\.\d+\.blocks\.\d+\.(mlp\.norm[12]|token_mixer)\.'],
    'mmpretrain': [r'^patch_embed\.[01]\.(conv|bn)\.', r'^network\.\d+\.\d+\.ls[12]\.weight$'],
    'mmef': [r'^stem\.conv[12]\.(conv|bn)\.', r'^stages\.\d+\.(attn_blocks|downsample\.bn)\.',
             r'^stages\.\d+\.blocks\.\d+\.mlp\.fc[12]\.(conv|bn)\.'],
}

# inside a block: source name -> mmef name (prefix match on whole name components)
_4D = {'mlp.fc1': 'mlp.fc1.conv', 'mlp.norm1': 'mlp.fc1.bn', 'mlp.fc2': 'mlp.fc2.conv',
       'mlp.norm2': 'mlp.fc2.bn', 'layer_scale_1': 'ls1.gamma', 'layer_scale_2': 'ls2.gamma',
       'ls1.weight': 'ls1.gamma', 'ls2.weight': 'ls2.gamma'}
_3D = {'token_mixer.qkv': 'attn.qkv', 'token_mixer.proj': 'attn.proj',
       'layer_scale_1': 'ls1.gamma', 'layer_scale_2': 'ls2.gamma',
       'ls1.weight': 'ls1.gamma', 'ls2.weight': 'ls2.gamma'}
_CONV_BN = {'proj': 'conv', 'norm': 'bn', 'conv': 'conv', 'bn': 'bn'}

DROP_INDEX = 'index buffer (mmef derives it from the grid)'
DROP_PLACEHOLDER = 'zero placeholder of the dense files (attention_biases_seg is the real table)'


def _sub(name, table):
    for old, new in table.items():
        if name == old or name.startswith(old + '.'):
            return new + name[len(old):]
    return name


def detect_format(state_dict):
    """'original', 'timm', 'mmpretrain' or 'mmef' for a backbone-level state dict, else None;
    with '_v2' appended for EfficientFormerV2 (its MLPs have a depthwise 'mid' conv).

    Decided by keys only one layout has; when a dict mixes layouts the most frequent one wins.
    """
    counts = {fmt: sum(1 for k in state_dict if any(re.match(p, k) for p in patterns))
              for fmt, patterns in _MARKERS.items()}
    best = max(counts, key=counts.get)
    if not counts[best]:
        return None
    if not any(_V2_MARKER.search(k) for k in state_dict):
        return best
    counts = {fmt: sum(1 for k in state_dict if any(re.search(p, k) for p in patterns))
              for fmt, patterns in _V2_MARKERS.items()}
    return max(counts, key=counts.get)


def _num_4d(state_dict, pattern):
    """Number of 4D blocks in the last stage: their BN-ed MLP names only exist in 4D blocks."""
    idx = {int(m.group(1)) for k in state_dict for m in [re.match(pattern, k)] if m}
    return max(idx) + 1 if idx else 0


def _block(stage, j, rest, num_4d, has_seg, dropped, key):
    """mmef name of ``rest`` in block slot ``j`` of ``stage`` (None when dropped)."""
    if stage == 3 and j > num_4d:  # 3D block after the flatten slot
        if rest.endswith(('attention_bias_idxs', 'attention_bias_idxs_seg')):
            dropped[key] = DROP_INDEX
            return None
        if rest == 'token_mixer.attention_biases' and has_seg:
            dropped[key] = DROP_PLACEHOLDER
            return None
        if rest in ('token_mixer.attention_biases', 'token_mixer.attention_biases_seg'):
            rest = 'attn.bias_table'
        return f'stages.3.attn_blocks.{j - num_4d - 1}.' + _sub(rest, _3D)
    return f'stages.{stage}.blocks.{j}.' + _sub(rest, _4D)


def _original_stem(key):
    """patch_embed.{0,1,3,4} (conv, BN, act, conv, BN) of the original V1 / V2 files -> mmef."""
    m = re.match(r'patch_embed\.([0134])\.(.+)$', key)
    if not m:
        return key
    unit = {'0': 'conv1.conv', '1': 'conv1.bn', '3': 'conv2.conv', '4': 'conv2.bn'}[m.group(1)]
    return f'stem.{unit}.{m.group(2)}'


def _map_original(state_dict, dropped):
    has_seg = needs_official_bias(state_dict)
    num_4d = _num_4d(state_dict, r'network\.6\.(\d+)\.mlp\.norm1\.')
    out = {}
    for key, value in state_dict.items():
        new = _original_stem(key)
        m = re.match(r'network\.(\d)\.(.+)$', key)
        if m:
            idx, rest = int(m.group(1)), m.group(2)
            if idx % 2:  # downsampling between stages
                new = f'stages.{(idx + 1) // 2}.downsample.' + _sub(rest, _CONV_BN)
            else:
                j, rest = rest.split('.', 1)
                new = _block(idx // 2, int(j), rest, num_4d, has_seg, dropped, key)
        m = re.match(r'norm([0246])\.(.+)$', key)
        if m:
            new = f'norm{int(m.group(1)) // 2}.{m.group(2)}'
        if new is not None:
            out[new] = value
    return out


def _map_timm(state_dict, dropped):
    num_4d = _num_4d(state_dict, r'stages\.3\.blocks\.(\d+)\.mlp\.norm1\.')
    stem = {'conv1': 'conv1.conv', 'norm1': 'conv1.bn', 'conv2': 'conv2.conv', 'norm2': 'conv2.bn'}
    out = {}
    for key, value in state_dict.items():
        new = key
        m = re.match(r'stem\.(conv[12]|norm[12])\.(.+)$', key)
        if m:
            new = f'stem.{stem[m.group(1)]}.{m.group(2)}'
        m = re.match(r'stages\.(\d)\.downsample\.(.+)$', key)
        if m:
            new = f'stages.{m.group(1)}.downsample.' + _sub(m.group(2), _CONV_BN)
        m = re.match(r'stages\.(\d)\.blocks\.(\d+)\.(.+)$', key)
        if m:
            new = _block(int(m.group(1)), int(m.group(2)), m.group(3), num_4d, False, dropped,
                         key)
        if key.startswith('head_dist.'):
            new = 'dist_head.' + key[len('head_dist.'):]
        if new is not None:
            out[new] = value
    return out


def _map_mmpretrain(state_dict, dropped):
    # in network.i (i >= 1) slot 0 is the downsampling conv, so block j sits in slot j + 1
    num_4d = max(_num_4d(state_dict, r'network\.3\.(\d+)\.mlp\.norm1\.') - 1, 0)
    # ImageNet files carry only norm3, a LayerNorm on tokens: the classifier's norm
    classifier_norm = not any(re.match(r'norm[012]\.', k) for k in state_dict)
    out = {}
    for key, value in state_dict.items():
        new = key
        m = re.match(r'patch_embed\.([01])\.(.+)$', key)
        if m:
            new = f'stem.conv{int(m.group(1)) + 1}.' + _sub(m.group(2), _CONV_BN)
        m = re.match(r'network\.(\d)\.(\d+)\.(.+)$', key)
        if m:
            stage, slot, rest = int(m.group(1)), int(m.group(2)), m.group(3)
            if stage and slot == 0:
                new = f'stages.{stage}.downsample.' + _sub(rest, _CONV_BN)
            else:
                new = _block(stage, slot - (stage > 0), rest, num_4d, False, dropped, key)
        if classifier_norm and key.startswith('norm3.'):
            new = 'norm.' + key[len('norm3.'):]
        if new is not None:
            out[new] = value
    return out


# ---------------------------------------------------------------- EfficientFormerV2
# V2 layouts have a depthwise conv in every MLP ('mlp.mid'), which V1 never has.
_V2_MARKER = re.compile(r'(^|\.)mlp\.mid(_norm)?\.')
_V2_MARKERS = {
    'original_v2': [r'^patch_embed\.', r'^network\.'],
    'timm_v2': [r'\.token_mixer\.', r'^stages\.[12]\.downsample\.conv\.(conv|bn)\.',
                r'^head_dist\.', r'\.attention_biases$'],
    'mmef_v2': [r'\.attn\.(q|k|v|proj)\.', r'^stages\.[12]\.downsample\.(conv|bn)\.[a-z_]+$',
                r'\.bias_table$'],
}
# inside a V2 block / the downsampling attention: source name -> mmef name
_V2_ORIGINAL = {
    'mlp.fc1': 'mlp.fc1.conv', 'mlp.norm1': 'mlp.fc1.bn', 'mlp.mid': 'mlp.mid.conv',
    'mlp.mid_norm': 'mlp.mid.bn', 'mlp.fc2': 'mlp.fc2.conv', 'mlp.norm2': 'mlp.fc2.bn',
    'layer_scale_1': 'ls1.gamma', 'layer_scale_2': 'ls2.gamma',
    'token_mixer.proj.1': 'attn.proj.conv', 'token_mixer.proj.2': 'attn.proj.bn',
    'token_mixer.talking_head1': 'attn.talking_head1',
    'token_mixer.talking_head2': 'attn.talking_head2',
    **{f'token_mixer.{n}.{i}': f'attn.{n}.{m}' for n in ('q', 'k', 'v', 'v_local', 'stride_conv')
       for i, m in (('0', 'conv'), ('1', 'bn'))},
    # downsampling attention (network.5.attn)
    'q.local.0': 'q_local', 'q.proj.0': 'q.conv', 'q.proj.1': 'q.bn',
    'k.0': 'k.conv', 'k.1': 'k.bn', 'v.0': 'v.conv', 'v.1': 'v.bn', 'v_local.0': 'v_local.conv',
    'v_local.1': 'v_local.bn', 'proj.1': 'proj.conv', 'proj.2': 'proj.bn',
}
_V2_TIMM = {'token_mixer': 'attn', 'q.local': 'q_local', 'q.proj': 'q'}


def _v2_table(key, rest, dense, dropped):
    """mmef name of an attention-bias entry ('bias_table'), or None when it is dropped."""
    if rest.endswith(('attention_bias_idxs', 'attention_bias_idxs_seg')):
        dropped[key] = DROP_INDEX
        return None
    if rest.endswith('attention_biases') and dense:
        dropped[key] = DROP_PLACEHOLDER
        return None
    return rest.rsplit('attention_biases', 1)[0] + 'bias_table'


def _flat_scale(key, value):
    """The original V2 layer scales are (C, 1, 1); mmef's are (C, ) (a view, no copy)."""
    return value.reshape(-1) if key.endswith(('layer_scale_1', 'layer_scale_2')) else value


def _map_original_v2(state_dict, dropped):
    dense = needs_official_bias(state_dict)
    out = {}
    for key, value in state_dict.items():
        new = _original_stem(key)
        m = re.match(r'network\.([13])\.(proj|norm)\.(.+)$', key)
        if m:
            new = f'stages.{(int(m.group(1)) + 1) // 2}.downsample.' \
                  f'{_CONV_BN[m.group(2)]}.{m.group(3)}'
        m = re.match(r'network\.5\.(conv|bn)\.(.+)$', key)
        if m:
            new = f'stages.3.downsample.conv.{m.group(1)}.{m.group(2)}'
        m = re.match(r'network\.5\.attn\.(.+)$', key)
        if m:
            rest = m.group(1)
            if 'attention_bias' in rest:
                rest = _v2_table(key, rest, dense, dropped)
            new = None if rest is None else 'stages.3.downsample.attn.' + _sub(rest, _V2_ORIGINAL)
        m = re.match(r'network\.([0246])\.(\d+)\.(.+)$', key)
        if m:
            rest = m.group(3)
            if 'attention_bias' in rest:
                rest = _v2_table(key, rest.replace('token_mixer.', 'attn.'), dense, dropped)
            new = None if rest is None else \
                f'stages.{int(m.group(1)) // 2}.blocks.{m.group(2)}.' + _sub(rest, _V2_ORIGINAL)
        if new is not None:
            out[new] = _flat_scale(key, value)
    return out


def _map_timm_v2(state_dict, dropped):
    out = {}
    for key, value in state_dict.items():
        new = re.sub(r'^stages\.([12])\.downsample\.conv\.', r'stages.\1.downsample.', key)
        if 'attention_bias' in new:
            new = _v2_table(key, new, False, dropped)
        if new is not None:
            new = _rename_parts(new, _V2_TIMM)
            if new.startswith('head_dist.'):
                new = 'dist_head.' + new[len('head_dist.'):]
            out[new] = value
    return out


def _rename_parts(name, table):
    """Applies ``table`` (old -> new dotted fragments) wherever a fragment starts a component."""
    for old, new in table.items():
        name = re.sub(rf'(^|\.){re.escape(old)}\.', lambda m: f'{m.group(1)}{new}.', name)
    return name


_MAPPERS = {'original': _map_original, 'timm': _map_timm, 'mmpretrain': _map_mmpretrain,
            'original_v2': _map_original_v2, 'timm_v2': _map_timm_v2}


FAMILY_BACKBONES = {'v1': 'EfficientFormer', 'v2': 'EfficientFormerV2'}


def key_family(keys):
    """'v2' for mmef-named keys of an EfficientFormerV2 (its MLPs have a depthwise ``mid``
    conv, its attentions talking heads), 'v1' for an EfficientFormer (MB3D ``attn_blocks``, or
    MLPs without a ``mid`` conv), None when the keys tell neither."""
    keys = list(keys)
    if any('.mlp.mid.' in k or '.talking_head' in k for k in keys):
        return 'v2'
    if any('.attn_blocks.' in k for k in keys) or any(
            re.match(r'stages\.\d+\.blocks\.\d+\.mlp\.fc1\.', k) for k in keys):
        return 'v1'
    return None


def map_with_report(state_dict):
    """(format, mapped dict, {dropped key: reason}) for a backbone-level state dict."""
    fmt = detect_format(state_dict)
    dropped = {}
    if fmt not in _MAPPERS:
        return fmt, dict(state_dict), dropped
    return fmt, _MAPPERS[fmt](state_dict, dropped), dropped


def _map_if(fmt, state_dict):
    if detect_format(state_dict) != fmt:
        return dict(state_dict)  # not this layout (e.g. already mapped): names could clash
    return _MAPPERS[fmt](state_dict, {})


def map_original(state_dict):
    """Original EfficientFormer (ImageNet ``model`` or dense ``backbone.*``) -> mmef names.

    The attention bias of the dense files (``attention_biases_seg``) wins over the ImageNet
    placeholder ``attention_biases`` they also carry. Index buffers are dropped: mmef derives them.
    The returned dict has the original classifier keys (head / dist_head / norm) unchanged.
    """
    return _map_if('original', state_dict)


def map_timm(state_dict):
    """timm ``efficientformer_l*`` -> mmef names (``head_dist`` becomes ``dist_head``)."""
    return _map_if('timm', state_dict)


def map_mmpretrain(state_dict):
    """mmpretrain EfficientFormer backbone (``backbone.`` prefix removed) -> mmef names.

    A lone ``norm3`` (no norm0..2) is the LayerNorm of an ImageNet model and becomes ``norm.``.
    """
    return _map_if('mmpretrain', state_dict)


def needs_official_bias(state_dict):
    """The original dense files were trained with the pair-matrix bias ('official' mode)."""
    return any(k.endswith('attention_biases_seg') for k in state_dict)


def to_mmef(state_dict):
    """Maps a backbone-level state dict of any known format to mmef names (idempotent)."""
    return map_with_report(state_dict)[1]
