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


ALLOWED = {
    'pallas_kernels': set(),
    'models': {'pallas_kernels', 'models'},
    'decoding': {'models', 'pallas_kernels', 'decoding'},
    'data': {'data'},
    'training': {'models', 'data', 'training', 'pallas_kernels'},
    'configs': {'configs'},
}
PROJECT = {'pallas_kernels', 'models', 'decoding', 'data', 'training', 'configs', 'benchmarks',
           'cli'}


def _entry_point_main(tree: ast.Module) -> set[int]:
  """Ids of the nodes inside `def main` of an entry-point module (one with an
  `if __name__ == '__main__':` guard, e.g. `python -m models.hf_import`): like train.py and
  sample.py, such a `main` may import anything, function-locally."""
  guarded = any(isinstance(n, ast.If) and '__name__' in ast.unparse(n.test) for n in tree.body)
  if not guarded:
    return set()
  return {id(n) for f in tree.body if isinstance(f, ast.FunctionDef) and f.name == 'main'
          for n in ast.walk(f)}


def test_import_rules_of_design_md():
  bad = []
  for folder, allowed in ALLOWED.items():
    for dirpath, _, files in os.walk(os.path.join(ROOT, folder)):
      for name in files:
        if not name.endswith('.py'):
          continue
        path = os.path.join(dirpath, name)
        tree = ast.parse(open(path).read())
        exempt = _entry_point_main(tree)
        for node in ast.walk(tree):
          if id(node) in exempt:
            continue
          mods = []
          if isinstance(node, ast.Import):
            mods = [a.name for a in node.names]
          elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            mods = [node.module]
          for m in mods:
            top = m.split('.')[0]
            if top in PROJECT and top not in allowed and top != folder:
              bad.append(f'{os.path.relpath(path, ROOT)} imports {m}')
  assert not bad, bad
