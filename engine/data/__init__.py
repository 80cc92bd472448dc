"""Open-set dataset suites: in-distribution splits plus near- and far-OOD sets.

`engine.data.suite` holds what every suite shares (`DataConfig`, `Suite`, the registry
`suites`, `load_suite`, the split and image-file helpers); each other module of this
package is one source and registers its suites: `digits`, `imagefolder`, `openood` (with
its single datasets in `datasets`). Importing the package imports every module in it, so
a new suite is one new file here with a `@suites.register("name")` builder.

Example:
    >>> from engine.data import DataConfig, load_suite
    >>> suite = load_suite(DataConfig(suite="digits", known_classes=[0, 1, 2, 3, 4, 5]))
    >>> suite.num_classes, suite.input_shape
    (6, (1, 8, 8))
    >>> [(s.name, s.group) for s in suite.ood]
    [('digits_6-9', 'near'), ('photos', 'far'), ('noise', 'far')]
    >>> {"digits", "imagefolder", "cifar10-ood"} <= set(suites.names())
    True
"""

from __future__ import annotations

import importlib
import pkgutil

from engine.data.suite import (
    IMAGE_EXTENSIONS,
    DataConfig,
    OODGroup,
    OODSet,
    Split,
    Suite,
    load_suite,
    suites,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "DataConfig",
    "OODGroup",
    "OODSet",
    "Split",
    "Suite",
    "load_suite",
    "suites",
]

# Every module of the package registers its suites on import (as timm's model modules do):
# a new source is one file, with no list here to extend.
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
