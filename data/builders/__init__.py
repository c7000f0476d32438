"""TFDS builders over local files; importing this registers them with TFDS.

* `python_stdlib` (`PythonStdlib`): the running interpreter's stdlib sources.
* `text_files` (`TextFiles`): files matching a user glob.

Prepare and read them with `data.sources.load_source` (array_record format,
no TensorFlow needed).
"""

from data.builders.common import VALIDATION_FRACTION, split_by_path_hash
from data.builders.python_stdlib import (EXCLUDED_DIRS, PythonStdlib,
                                         list_stdlib_files, stdlib_root)
from data.builders.text_files import TextFiles, TextFilesConfig

__all__ = ['VALIDATION_FRACTION', 'split_by_path_hash', 'EXCLUDED_DIRS',
           'PythonStdlib', 'list_stdlib_files', 'stdlib_root', 'TextFiles',
           'TextFilesConfig']
