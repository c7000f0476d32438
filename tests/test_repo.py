"""Repository hygiene: the README's two commands and .ci/run agree; import rules hold."""

import ast
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _code_blocks(text):
  return re.findall(r'```bash\n(.*?)```', text, flags=re.S)


def test_readme_starts_with_two_commands_and_ci_runs_the_second():
  readme = open(os.path.join(ROOT, 'README.md')).read()
  first_section = readme.split('\n## ')[0]
  blocks = _code_blocks(first_section)
  assert len(blocks) == 2, 'the README opens with exactly two commands'
  main, tests = (b.strip() for b in blocks)
  assert 'train.py' in main and 'sample.py' in main
  assert 'pytest' in tests
  ci = open(os.path.join(ROOT, '.ci', 'run')).read()
  assert tests in ci


# DESIGN.md's layout table ("may import"), plus the package that holds a run on disk
# (`workdir/`: checkpoints, loading, the model kind, HF import/export) and the one API above
# `decoding/` and `workdir/` that loads runs and runs decoders on them (`workbench/`). Entry
# points (train.py, sample.py), benchmarks/, notebooks/ and tests/ may import everything; no
# library package imports them. No exemptions: function-local imports count too.
ALLOWED = {
    'pallas_kernels': set(),
    'models': {'pallas_kernels'},
    'decoding': {'models', 'pallas_kernels'},
    'data': set(),
    'configs': set(),
    'training': {'models', 'data', 'pallas_kernels', 'workdir'},
    'workdir': {'models', 'data', 'configs'},
    'workbench': {'decoding', 'workdir', 'models', 'data', 'pallas_kernels'},
}
# DESIGN.md's "Never" line, stated on its own so that widening ALLOWED cannot undo it.
NEVER = [('models', 'decoding'), ('models', 'training'), ('decoding', 'training'),
         ('models', 'workdir'), ('decoding', 'workdir')] + [
             (p, 'workbench') for p in ('models', 'decoding', 'training', 'data', 'workdir')] + [
             ('pallas_kernels', p) for p in ('models', 'decoding', 'training', 'data', 'configs',
                                             'workdir')]
PROJECT = {'pallas_kernels', 'models', 'decoding', 'data', 'training', 'configs', 'workdir',
           'workbench', 'benchmarks', 'cli', 'train', 'sample'}


def _project_imports(folder: str):
  """(file, imported module) for every import of a project package by a file of `folder`."""
  for dirpath, _, files in os.walk(os.path.join(ROOT, folder)):
    for name in sorted(files):
      if not name.endswith('.py'):
        continue
      path = os.path.join(dirpath, name)
      for node in ast.walk(ast.parse(open(path).read())):
        mods = []
        if isinstance(node, ast.Import):
          mods = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
          mods = [node.module]
        elif isinstance(node, ast.ImportFrom):
          raise AssertionError(f'{os.path.relpath(path, ROOT)}: use absolute imports')
        for m in mods:
          if m.split('.')[0] in PROJECT and m.split('.')[0] != folder:
            yield os.path.relpath(path, ROOT), m


def test_import_rules_of_design_md():
  bad = [f'{path} imports {m}' for folder, allowed in ALLOWED.items()
         for path, m in _project_imports(folder) if m.split('.')[0] not in allowed]
  assert not bad, bad


def test_the_never_arrows_of_design_md():
  for src, dst in NEVER:
    assert dst not in ALLOWED[src], (src, dst)
  bad = [f'{path} imports {m}' for src, dst in NEVER for path, m in _project_imports(src)
         if m.split('.')[0] == dst]
  assert not bad, bad
