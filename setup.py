import os.path as osp

from setuptools import find_packages, setup


def read_version():
    ns = {}
    with open(osp.join(osp.dirname(__file__), 'mmef', 'version.py')) as f:
        exec(f.read(), ns)
    return ns['__version__']


setup(
    name='mmef',
    version=read_version(),
    description='EfficientFormer backbones for the OpenMMLab 2.x stack '
    '(mmengine, mmcv 2, mmdet 3, mmsegmentation 1)',
    long_description=open('README.md').read() if osp.exists('README.md') else '',
    long_description_content_type='text/markdown',
    packages=find_packages(include=['mmef', 'mmef.*']),
    python_requires='>=3.8',
    # torch and mmcv (compiled with ops) are installed first by scripts/setup.sh; listing
    # torch here would let pip replace a CPU build with a CUDA one.
    install_requires=[
        'mmengine>=0.10,<0.11',
        'mmdet>=3.1,<3.4',
        'mmsegmentation>=1.1,<1.3',
    ],
    extras_require={'tests': ['pytest', 'onnx', 'onnxruntime']},
    license='Apache License 2.0',
)
