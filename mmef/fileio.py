"""Atomic local file writes for checkpoints.

mmengine's ``LocalBackend.put`` opens the target file and writes into it, so a run killed (or a
disk filling up) mid-save leaves a truncated checkpoint where a good one used to be. The
``'mmef_atomic'`` backend writes to a temporary file in the same directory, flushes and fsyncs
it, then ``os.replace``-s it over the target: readers see either the old file or the complete
new one, never a half-written file. Configs select it with::

    default_hooks = dict(checkpoint=dict(backend_args=dict(backend='mmef_atomic')))
"""
import errno
import os
import os.path as osp
import tempfile

from mmengine.fileio import LocalBackend, register_backend

BACKEND_NAME = 'mmef_atomic'


def atomic_write(data, filepath, overwrite=True):
    """Writes ``data`` to ``filepath`` via a temporary file in the same folder and ``os.replace``.

    Args:
        data (bytes | str | callable): the content, or ``data(fileobj)`` writing it (e.g.
            ``lambda f: torch.save(obj, f)``).
        filepath (str): the target; its folder is created if missing.
        overwrite (bool): if False, an existing ``filepath`` (also one that appears while
            writing) is left alone and FileExistsError is raised.

    Raises:
        OSError: the write failed (e.g. disk full); the message names the file, says the
            previous file is unchanged and what to do. The temporary file is removed.
    """
    filepath = os.fspath(filepath)
    directory = osp.dirname(osp.abspath(filepath))
    os.makedirs(directory, exist_ok=True)
    if isinstance(data, str):
        data = data.encode('utf-8')
    fd, tmp = tempfile.mkstemp(prefix=f'.{osp.basename(filepath)}.', suffix='.tmp', dir=directory)
    try:
        with os.fdopen(fd, 'wb') as f:
            if callable(data):
                data(f)
            else:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)  # mkstemp creates 0600; give the file the usual permissions
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        if not overwrite and osp.exists(filepath):
            raise FileExistsError(f'{filepath!r} exists (it appeared while writing); pass '
                                  f'--force (force=True) to overwrite it')
        os.replace(tmp, filepath)
    except BaseException as err:
        if osp.exists(tmp):
            os.remove(tmp)
        if not isinstance(err, OSError) or isinstance(err, FileExistsError):
            raise
        hint = ('free disk space or point --work-dir to a disk with room'
                if err.errno in (errno.ENOSPC, errno.EDQUOT) else
                'check that the directory is writable and has free space')
        raise OSError(err.errno, f'could not write {filepath!r} ({err}); the '
                      f'previous file there, if any, is unchanged; {hint}') from err
    return filepath


@register_backend(BACKEND_NAME)
class AtomicLocalBackend(LocalBackend):
    """``LocalBackend`` whose ``put`` / ``put_text`` never leave a partly written file."""

    def put(self, obj, filepath):
        atomic_write(obj, filepath)

    def put_text(self, obj, filepath, encoding='utf-8'):
        atomic_write(obj.encode(encoding), filepath)
